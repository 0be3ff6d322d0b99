// Signing in with an API key (the admin key or a tenant's): POST /ui/session sets the
// HttpOnly cookie; the key itself is not kept by the page.
import { ApiError, call } from '../api';
import { h, fill } from '../dom';
import type { Session } from '../types';

export function login(main: HTMLElement, done: (s: Session) => void): void {
  const key = h('input', { id: 'key', name: 'key', type: 'password', autocomplete: 'current-password', required: true });
  const error = h('p', { class: 'error', role: 'alert' });
  fill(main, h('form', {
    class: 'login',
    onsubmit: async (e: Event) => {
      e.preventDefault();
      try {
        const res = await call<Session>('POST', '/ui/session', { key: key.value });
        key.value = '';
        done(res.data);
      } catch (err) {
        error.textContent = err instanceof ApiError ? err.message : String(err);
      }
    },
  },
    h('h1', null, 'Sign in to Lapse'),
    h('label', { for: 'key' }, 'API key'), key,
    h('button', { type: 'submit', class: 'primary' }, 'Sign in'),
    error));
  key.focus();
}
