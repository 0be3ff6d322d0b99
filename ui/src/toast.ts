// Results of actions, shown without blocking the page (an aria-live region).
import { byId, h } from './dom';

export function toast(message: string, kind: 'ok' | 'error' = 'ok'): void {
  const el = h('div', { class: `toast toast-${kind}`, role: kind === 'error' ? 'alert' : null }, message);
  byId('toasts').appendChild(el);
  setTimeout(() => el.remove(), kind === 'error' ? 9000 : 5000);
}
