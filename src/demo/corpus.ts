// The demo's sample corpus, written for this project: three tenants (companies using one shared
// staff app), three content types. Policies (hot when active, newest first; each topic also has an
// archived earlier edition), help articles (hot by view count) and handbooks, long documents split
// into chunks (the long tail). The tenants' rules differ, so the same question has a different
// answer in each tenant. Deterministic: the same rows on every run.

export const TENANTS = ['northwind', 'bluebird', 'kestrel'] as const;
export type Tenant = (typeof TENANTS)[number];

export interface Policy { id: number; tenant: string; title: string; body: string; active: boolean; updated_at: string }
export interface HelpArticle { id: number; tenant: string; title: string; body: string; views: number }
export interface Handbook { id: number; tenant: string; title: string; body: string }
export interface Corpus { tenants: string[]; policies: Policy[]; helpArticles: HelpArticle[]; handbooks: Handbook[] }

/** What differs between the tenants: the facts their policies state. */
interface Facts {
  callOut: string; remoteDays: string; expenseDays: number; parentalWeeks: number; leaveNotice: string;
  overtimeRate: string; doctorNoteDay: string; trainingBudget: string; site: string;
}

const FACTS: Record<Tenant, Facts> = {
  northwind: { callOut: 'call your shift lead at least two hours before the shift starts', remoteDays: 'two days a week',
    expenseDays: 30, parentalWeeks: 16, leaveNotice: 'two weeks', overtimeRate: 'one and a half times', doctorNoteDay: 'fourth',
    trainingBudget: 'EUR 1,200', site: 'the Rotterdam depot' },
  bluebird: { callOut: 'post in the #shift-cover channel and text the duty phone at least four hours before the shift', remoteDays: 'three days a week',
    expenseDays: 60, parentalWeeks: 20, leaveNotice: 'one month', overtimeRate: 'double', doctorNoteDay: 'third',
    trainingBudget: 'EUR 2,000', site: 'the Leeds office' },
  kestrel: { callOut: 'phone the site manager directly the evening before, or by 6:00 on the day', remoteDays: 'one day a week, office roles only',
    expenseDays: 14, parentalWeeks: 12, leaveNotice: 'three weeks', overtimeRate: 'one and a quarter times', doctorNoteDay: 'second',
    trainingBudget: 'EUR 800', site: 'the Aarhus warehouse' },
};

const POLICY_TOPICS: Array<[string, (f: Facts) => string]> = [
  ['Shift call-out', (f) => `If you cannot make a scheduled shift, ${f.callOut}. A no-show without notice counts as an unplanned absence; the lead reassigns the shift from the standby list.`],
  ['Overtime approval', (f) => `Overtime must be approved by your manager before the extra hours are worked. Approved overtime is paid at ${f.overtimeRate} the base rate on the next payslip.`],
  ['Remote work', (f) => `Staff may work remotely up to ${f.remoteDays}. Agree the days with your team lead and keep your calendar up to date so colleagues can find you.`],
  ['Expense claims', (f) => `Submit expense claims within ${f.expenseDays} days with an itemised receipt. Meals while travelling are covered up to the daily allowance; alcohol is never reimbursed.`],
  ['Parental leave', (f) => `Employees with one year of service receive ${f.parentalWeeks} weeks of paid parental leave. Tell HR early so that cover can be arranged.`],
  ['Safety incidents', (f) => `Report every safety incident at ${f.site}, near misses included, in the incident log within twenty-four hours. Serious injuries are reported to the site manager at once.`],
  ['Data protection', () => 'Customer data may only be used for the purpose it was collected for. Never export customer lists to personal devices; report a suspected breach to the privacy officer immediately.'],
  ['Holiday booking', (f) => `Book annual leave in the scheduling app at least ${f.leaveNotice} ahead. Requests are approved in the order they arrive, with at most three people of one team away at once.`],
  ['Uniform and equipment', (f) => `Safety shoes and high-visibility vests are mandatory on the floor at ${f.site}. Damaged equipment is replaced free of charge at the stores desk.`],
  ['Sick leave', (f) => `If you are ill, tell your lead before your shift starts. From the ${f.doctorNoteDay} day of absence a doctor's note is required.`],
  ['Training budget', (f) => `Each employee has a yearly training budget of ${f.trainingBudget}. Courses related to your role are approved by your manager.`],
  ['Travel booking', () => 'Book business travel through the travel desk. Economy class is the default for flights under six hours; rail is preferred for trips under four hours.'],
];

const HELP_TOPICS: Array<[string, string]> = [
  ['Reset your password', 'Open the sign-in page, choose "Forgot password" and follow the link sent to your email. The link expires after one hour.'],
  ['Swap a shift with a colleague', 'Open the schedule, tap the shift you want to give away and choose "Offer swap". Your colleague accepts in the app and your lead is notified.'],
  ['Download your payslip', 'Payslips are under Profile, then Documents. Each payslip is available as a PDF for seven years.'],
  ['Set up two-factor authentication', 'Go to Settings, then Security, and scan the QR code with an authenticator app. Keep the recovery codes somewhere safe.'],
  ['Change your notification settings', 'Under Settings, then Notifications, choose which alerts you receive by push, email or text message.'],
  ['Clock in from a mobile device', 'Tap "Clock in" on the home screen while you are on site. Location must be enabled; a clock-in outside the site boundary is refused.'],
  ['Request time off', 'Open Time off, choose the dates and the type of leave, and submit. You can follow the approval status on the same screen.'],
  ['Update your bank details', 'Bank details are changed under Profile, then Pay. Changes made after the twentieth take effect the following month.'],
  ['Find a colleague in the directory', 'Search the directory by name, team or site. Profiles show the working hours and the preferred way to reach each person.'],
  ['Report a problem with the app', 'Shake your phone or open Help, then "Report a problem". Add a screenshot; support answers within one working day.'],
];
const PLATFORMS = ['on the web', 'on iPhone', 'on Android', 'on the kiosk'];

const HANDBOOK_SECTIONS = [
  'Welcome and how this handbook is organised', 'Our values in daily work', 'Working hours and breaks', 'Pay, benefits and pensions',
  'Health and safety on site', 'Equipment and tools', 'Conduct and respect at work', 'Learning and career paths',
];

function paragraph(seed: number, topic: string, site: string): string {
  const sentences = [
    `This part covers ${topic.toLowerCase()} for everyone working at ${site}.`,
    'Read it once when you start, and come back to it whenever something is unclear.',
    'Where local rules differ, the site manager publishes the exception on the notice board.',
    `Questions about ${topic.toLowerCase()} go to your team lead first, then to HR.`,
    'The examples here come from real situations on our sites, with names removed.',
    'The rules were last reviewed with the staff council and apply to every contract type.',
  ];
  const start = seed % sentences.length;
  return [...sentences.slice(start), ...sentences.slice(0, start)].slice(0, 4).join(' ');
}

const pad = (n: number) => String(n).padStart(2, '0');

function policies(tenants: readonly Tenant[], withArchive: boolean): Policy[] {
  const rows: Policy[] = [];
  let id = 1;
  tenants.forEach((tenant, t) => {
    POLICY_TOPICS.forEach(([title, body], i) => {
      const f = FACTS[tenant];
      // the current edition, dated 2026 (a later month for later topics, shifted per tenant)
      rows.push({ id: id++, tenant, title, body: body(f), active: true, updated_at: `2026-${pad(1 + ((i + t) % 11))}-${pad(1 + ((i * 7 + t * 3) % 28))}` });
      if (withArchive) {
        rows.push({ id: id++, tenant, title: `${title} (2024 edition, archived)`, body: `Superseded. ${body(FACTS[TENANTS[(t + 1) % 3]!])}`,
          active: false, updated_at: `2024-${pad(1 + (i % 12))}-15` });
      }
    });
  });
  return rows;
}

function helpArticles(tenants: readonly Tenant[], platforms: number): HelpArticle[] {
  const rows: HelpArticle[] = [];
  let id = 1;
  tenants.forEach((tenant, t) => {
    PLATFORMS.slice(0, platforms).forEach((platform, p) => {
      HELP_TOPICS.forEach(([title, body], i) => {
        // a few articles get most of the views: roughly Zipf over topics and platforms
        rows.push({ id: id++, tenant, title: `${title} ${platform}`, body, views: Math.round(40_000 / ((i + 1 + t) * (p + 1))) });
      });
    });
  });
  return rows;
}

function handbooks(tenants: readonly Tenant[], sections: number, paragraphs: number): Handbook[] {
  const rows: Handbook[] = [];
  let id = 1;
  tenants.forEach((tenant, t) => {
    HANDBOOK_SECTIONS.slice(0, sections).forEach((section, s) => {
      const body = Array.from({ length: paragraphs }, (_, p) => paragraph(t + s + p, section, FACTS[tenant].site)).join('\n\n');
      rows.push({ id: id++, tenant, title: `${tenant} handbook: ${section}`, body });
    });
  });
  return rows;
}

/**
 * The full corpus: 3 tenants, 72 policies (36 active), 120 help articles, 24 handbooks of about
 * 1,600 characters (3 to 4 chunks of 600 each). Short (for CI): 2 tenants, 24 active policies,
 * 20 help articles, 6 handbooks.
 */
export function corpus(short = false): Corpus {
  const tenants: readonly Tenant[] = short ? ['northwind', 'kestrel'] : TENANTS;
  return {
    tenants: [...tenants],
    policies: policies(tenants, !short),
    helpArticles: helpArticles(tenants, short ? 1 : 4),
    handbooks: handbooks(tenants, short ? 3 : 8, short ? 3 : 5),
  };
}
