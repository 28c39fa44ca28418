// The demo's sample corpus, written for this project: three tenants, three content types.
// Policies (hot when active, newest first), help articles (hot by view count) and long handbook
// documents split into chunks (the long tail). Deterministic: the same rows on every run.

export const TENANTS = ['northwind', 'bluebird', 'kestrel'] as const;

export interface Policy { id: number; tenant: string; title: string; body: string; active: boolean; updated_at: string }
export interface HelpArticle { id: number; tenant: string; title: string; body: string; views: number }
export interface Handbook { id: number; tenant: string; title: string; body: string }

const POLICY_TOPICS: Array<[string, string]> = [
  ['Shift call-out', 'If you cannot make a scheduled shift, call your shift lead at least two hours before it starts. A no-show without a call counts as an unplanned absence; the lead reassigns the shift from the standby list.'],
  ['Overtime approval', 'Overtime must be approved by your manager before the extra hours are worked. Approved overtime is paid at one and a half times the base rate and appears on the next payslip.'],
  ['Remote work', 'Staff may work remotely up to two days a week when their role allows it. Agree the days with your team lead and keep your calendar up to date so colleagues know where to find you.'],
  ['Expense claims', 'Submit expense claims within thirty days with an itemised receipt. Meals while travelling are covered up to the daily allowance; alcohol is never reimbursed.'],
  ['Parental leave', 'Employees with one year of service receive sixteen weeks of paid parental leave. Tell HR at least eight weeks before the leave starts so cover can be arranged.'],
  ['Safety incidents', 'Report every safety incident, including near misses, in the incident log within twenty-four hours. Serious injuries are reported to the site manager at once.'],
  ['Data protection', 'Customer data may only be used for the purpose it was collected for. Never export customer lists to personal devices; report a suspected breach to the privacy officer immediately.'],
  ['Holiday booking', 'Book annual leave through the scheduling app at least two weeks ahead. Requests are approved in the order they arrive, with at most three people from one team away at once.'],
  ['Uniform and equipment', 'Safety shoes and high-visibility vests are mandatory on the warehouse floor. Damaged equipment is replaced free of charge at the stores desk.'],
  ['Sick leave', 'If you are ill, tell your lead before your shift starts. From the fourth day of absence a doctor\'s note is required.'],
  ['Training budget', 'Each employee has a yearly training budget. Courses related to your role are approved by your manager; certifications count toward your annual review.'],
  ['Travel booking', 'Book business travel through the travel desk. Economy class is the default for flights under six hours; rail is preferred for trips under four hours.'],
];

const HELP_TOPICS: Array<[string, string]> = [
  ['Reset your password', 'Open the sign-in page, choose "Forgot password" and follow the link sent to your email. The link expires after one hour.'],
  ['Swap a shift with a colleague', 'Open the schedule, tap the shift you want to give away and choose "Offer swap". Your colleague accepts in the app and your lead gets a notification.'],
  ['Download your payslip', 'Payslips are under Profile, then Documents. Each payslip is available as a PDF for seven years.'],
  ['Set up two-factor authentication', 'Go to Settings, then Security, and scan the QR code with an authenticator app. Keep the recovery codes somewhere safe.'],
  ['Change your notification settings', 'Under Settings, then Notifications, choose which alerts you receive by push, email or text message.'],
  ['Clock in from a mobile device', 'Tap "Clock in" on the home screen while you are on site. Location must be enabled; the clock-in is refused outside the site boundary.'],
  ['Request time off', 'Open Time off, choose the dates and the type of leave, and submit. You can follow the approval status on the same screen.'],
  ['Update your bank details', 'Bank details are changed under Profile, then Pay. Changes made after the twentieth take effect the following month.'],
  ['Find a colleague in the directory', 'Search the directory by name, team or site. Profiles show the working hours and the preferred way to reach each person.'],
  ['Report a problem with the app', 'Shake your phone or open Help, then "Report a problem". Add a screenshot; the support team answers within one working day.'],
];

const HANDBOOK_SECTIONS = [
  'Welcome and how this handbook is organised', 'Our values in daily work', 'Working hours and breaks', 'Pay, benefits and pensions',
  'Health and safety on site', 'Equipment and tools', 'Conduct and respect at work', 'Learning and career paths',
];

function paragraph(seed: number, topic: string): string {
  const sentences = [
    `This section explains ${topic.toLowerCase()} for everyone on the team.`,
    `Read it once when you start, and come back to it whenever something is unclear.`,
    `Where local rules differ, the site manager publishes the exception on the notice board.`,
    `Questions about ${topic.toLowerCase()} go to your team lead first, then to HR.`,
    `Examples in this part come from real situations on our sites, with names removed.`,
    `The rules were last reviewed with the staff council and apply to every contract type.`,
  ];
  const start = seed % sentences.length;
  return [...sentences.slice(start), ...sentences.slice(0, start)].join(' ');
}

export function policies(): Policy[] {
  const rows: Policy[] = [];
  let id = 1;
  TENANTS.forEach((tenant, t) => {
    POLICY_TOPICS.forEach(([title, body], i) => {
      const day = String(1 + ((i * 7 + t * 3) % 28)).padStart(2, '0');
      rows.push({ id: id++, tenant, title, body: `${body} (${tenant} edition)`, active: i % 5 !== 4, updated_at: `2026-${String(1 + (i % 10)).padStart(2, '0')}-${day}` });
    });
  });
  return rows;
}

export function helpArticles(): HelpArticle[] {
  const rows: HelpArticle[] = [];
  let id = 1;
  TENANTS.forEach((tenant, t) => {
    HELP_TOPICS.forEach(([title, body], i) => {
      // a few articles get most of the views: roughly Zipf over the topics
      rows.push({ id: id++, tenant, title, body, views: Math.round(20_000 / (i + 1 + t)) });
    });
  });
  return rows;
}

export function handbooks(): Handbook[] {
  const rows: Handbook[] = [];
  let id = 1;
  TENANTS.forEach((tenant, t) => {
    HANDBOOK_SECTIONS.forEach((section, s) => {
      const body = Array.from({ length: 6 }, (_, p) => paragraph(t + s + p, section)).join('\n\n');
      rows.push({ id: id++, tenant, title: `${tenant} handbook: ${section}`, body });
    });
  });
  return rows;
}
