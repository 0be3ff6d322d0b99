// The dashboard's entry: find out whether a sign-in is needed, then route by the hash
// (#/, #/env/<id>, #/pools, #/queues, #/providers, #/status, #/usage, #/webhooks).
import './style.css';
import { call, get, setCsrf, whenSignedOut } from './api';
import { byId, fill, h } from './dom';
import { closeLive } from './live';
import { environment } from './pages/env';
import { fleet } from './pages/fleet';
import { login } from './pages/login';
import { pools, providers, queues, status } from './pages/system';
import { usage } from './pages/usage';
import { webhooks } from './pages/webhooks';
import { toast } from './toast';
import type { Session } from './types';

const NAV: [string, string][] = [
  ['#/', 'Fleet'], ['#/pools', 'Pools'], ['#/queues', 'Queues'], ['#/providers', 'Providers'],
  ['#/status', 'Tasks'], ['#/usage', 'Usage'], ['#/webhooks', 'Webhooks'],
];

let session: Session | null = null;
let cleanup: (() => void) | null = null;

function header(): void {
  const top = byId('top');
  if (!session?.signed_in) {
    fill(top, h('span', { class: 'brand' }, 'Lapse'));
    return;
  }
  const here = location.hash || '#/';
  fill(top,
    h('span', { class: 'brand' }, 'Lapse'),
    h('nav', { 'aria-label': 'Pages' }, h('ul', null, ...NAV.map(([href, text]) => h('li', null,
      h('a', { href, 'aria-current': (href === '#/' ? here === '#/' || here.startsWith('#/env') : here.startsWith(href)) ? 'page' : null }, text))))),
    h('span', { class: 'who' }, session.tenant ? `tenant ${session.tenant}` : session.admin ? 'admin' : (session.actor ?? '')),
    session.required ? h('button', { type: 'button', id: 'sign-out', onclick: () => void signOut() }, 'Sign out') : null);
}

async function signOut(): Promise<void> {
  try {
    await call('DELETE', '/ui/session');
  } catch { /* signed out either way */ }
  signedOut();
}

function signedOut(): void {
  closeLive();
  setCsrf(null);
  session = null;
  cleanup?.();
  cleanup = null;
  header();
  login(byId('main'), signedIn);
}

function signedIn(s: Session): void {
  session = s;
  setCsrf(s.csrf ?? null);
  route();
}

function route(): void {
  if (!session) return;
  cleanup?.();
  cleanup = null;
  header();
  const main = byId('main');
  const hash = location.hash || '#/';
  const env = /^#\/env\/([0-9a-zA-Z_-]+)$/.exec(hash);
  if (env) cleanup = environment(main, session, decodeURIComponent(env[1]));
  else if (hash === '#/pools') void pools(main, session);
  else if (hash === '#/queues') void queues(main, session);
  else if (hash === '#/providers') void providers(main);
  else if (hash === '#/status') void status(main, session);
  else if (hash === '#/usage') void usage(main, session).then((c) => { cleanup = c; });
  else if (hash === '#/webhooks') void webhooks(main);
  else cleanup = fleet(main, session);
  main.focus({ preventScroll: true });
}

whenSignedOut(() => {
  if (session?.required) {
    toast('The session ended: sign in again.', 'error');
    signedOut();
  }
});
// In-page anchors (the skip link's #main) are not routes.
window.addEventListener('hashchange', () => { if (!location.hash || location.hash.startsWith('#/')) route(); });

get<Session>('/ui/session')
  .then((s) => (s.signed_in ? signedIn(s) : signedOut()))
  .catch((e) => fill(byId('main'), h('p', { class: 'error' }, `The server did not answer: ${String(e)}`)));
