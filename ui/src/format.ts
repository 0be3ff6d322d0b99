// Numbers and times as people read them.
import type { Environment } from './types';

export function duration(ms: number): string {
  if (!Number.isFinite(ms)) return '—';
  const s = Math.max(0, Math.floor(ms / 1000));
  const d = Math.floor(s / 86400);
  const hh = Math.floor((s % 86400) / 3600);
  const mm = Math.floor((s % 3600) / 60);
  const ss = s % 60;
  const two = (n: number) => String(n).padStart(2, '0');
  if (d > 0) return `${d}d ${two(hh)}h`;
  if (hh > 0) return `${hh}h ${two(mm)}m`;
  if (mm > 0) return `${mm}m ${two(ss)}s`;
  return `${ss}s`;
}

export function parseTime(iso: string | null | undefined): number | null {
  if (!iso) return null;
  const t = Date.parse(iso);
  return Number.isNaN(t) ? null : t;
}

/** Time left until `iso`, or a word when there is none. */
export function timeLeft(iso: string | null | undefined, now = Date.now()): string {
  const t = parseTime(iso);
  if (t === null) return 'no expiry';
  return t <= now ? 'expired' : duration(t - now);
}

/** How long ago `iso` was. */
export function ago(iso: string | null | undefined, now = Date.now()): string {
  const t = parseTime(iso);
  return t === null ? '—' : duration(now - t);
}

export function memory(mb: number | null | undefined): string {
  if (mb === null || mb === undefined) return '—';
  return mb >= 1024 && mb % 1024 === 0 ? `${mb / 1024} GiB` : `${mb} MiB`;
}

export function when(iso: string | null | undefined): string {
  const t = parseTime(iso);
  return t === null ? '—' : new Date(t).toLocaleString();
}

export function money(n: number): string {
  return n.toFixed(n < 1 ? 4 : 2);
}

/** The later of two copies of one environment; on a tie, the one that came second (`b`). */
export function newest(a: Environment, b: Environment | undefined): Environment {
  if (!b) return a;
  const ta = parseTime(a.updated_at);
  const tb = parseTime(b.updated_at);
  return ta !== null && tb !== null && ta > tb ? a : b;
}
