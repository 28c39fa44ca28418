// Values test/global-setup.ts hands to the test files (read them with `inject` from 'vitest').
declare module 'vitest' {
  export interface ProvidedContext {
    /** URL of the server's maintenance database; the tests create and drop databases through it. */
    serverUrl: string;
    /** Database with pgvector and the pgregen schema installed; freshDatabase() copies it. */
    templateDatabase: string;
  }
}

export {};
