// Usage and cost over time: /v1/usage asked for each of the last days (it answers one period
// at a time), drawn with uPlot, per tenant and for the environments that cost most.
import uPlot from 'uplot';
import 'uplot/dist/uPlot.min.css';
import { ApiError, get, query } from '../api';
import { h, fill } from '../dom';
import { money } from '../format';
import type { Session, Usage } from '../types';
import { table } from './table';

const DAYS = 7;
const COLOURS = ['#2563eb', '#dc2626', '#16a34a', '#9333ea', '#ea580c', '#0891b2', '#4b5563'];

export async function usage(main: HTMLElement, _session: Session): Promise<() => void> {
  fill(main, h('h1', null, 'Usage and cost'), h('p', { class: 'muted' }, 'Loading…'));
  const now = Date.now();
  const day = 86_400_000;
  const start = Math.floor(now / day) * day - (DAYS - 1) * day;
  const periods = Array.from({ length: DAYS }, (_, i) => [start + i * day, Math.min(start + (i + 1) * day, now)] as const);
  let days: Usage[];
  let total: Usage;
  try {
    days = await Promise.all(periods.map(([from, to]) =>
      get<Usage>(`/v1/usage${query({ from: new Date(from).toISOString(), to: new Date(Math.max(to, from + 1000)).toISOString() })}`)));
    total = await get<Usage>(`/v1/usage${query({ from: new Date(start).toISOString(), to: new Date(now).toISOString() })}`);
  } catch (e) {
    fill(main, h('h1', null, 'Usage and cost'), h('p', { class: 'error' }, e instanceof ApiError ? e.message : String(e)));
    return () => {};
  }
  const xs = periods.map(([from]) => from / 1000);
  const tenants = total.tenants.map((t) => t.tenant);
  const topEnvs = total.environments.slice().sort((a, b) => b.cost - a.cost || b.running_hours - a.running_hours).slice(0, 5);
  const tenantChart = h('div', { class: 'chart', role: 'img', 'aria-label': 'Cost per tenant per day' });
  const envChart = h('div', { class: 'chart', role: 'img', 'aria-label': 'Running hours per day of the costliest environments' });
  fill(main, h('h1', null, 'Usage and cost'),
    h('p', { class: 'muted' }, `The last ${DAYS} days, by day (UTC).`),
    h('section', null, h('h2', null, 'Cost per tenant'), tenantChart),
    h('section', null, h('h2', null, 'Running hours of the costliest environments'), envChart),
    h('section', null, h('h2', null, 'Tenants'),
      table('Tenants', ['Tenant', 'Environments', 'Running h', 'Stopped h', 'Cost'],
        total.tenants.map((t) => [t.tenant || '(none)', String(t.environments), t.running_hours.toFixed(2), t.stopped_hours.toFixed(2), money(t.cost)]))),
    h('section', null, h('h2', null, 'Environments'),
      table('Environments', ['Environment', 'Tenant', 'Owner', 'Running h', 'Stopped h', 'Hourly', 'Cost'],
        total.environments.map((e) => [h('a', { href: `#/env/${encodeURIComponent(e.id)}` }, e.id.slice(0, 13)), e.tenant || '(none)', e.owner,
          e.running_hours.toFixed(2), e.stopped_hours.toFixed(2), money(e.hourly), money(e.cost)]))));
  const plots: uPlot[] = [];
  const width = () => Math.max(280, Math.min(900, main.clientWidth - 16));
  const draw = (el: HTMLElement, names: string[], values: number[][], unit: string) => {
    const opts: uPlot.Options = {
      width: width(), height: 220,
      series: [{}, ...names.map((n, i) => ({ label: n || '(none)', stroke: COLOURS[i % COLOURS.length], width: 2,
        value: (_: uPlot, v: number | null) => (v === null ? '—' : `${v.toFixed(unit === '$' ? 4 : 2)} ${unit}`) }))],
      axes: [{}, { values: (_: uPlot, ticks: number[]) => ticks.map((t) => `${t}`) }],
      scales: { x: { time: true } },
    };
    plots.push(new uPlot(opts, [xs, ...values] as uPlot.AlignedData, el));
  };
  draw(tenantChart, tenants, tenants.map((t) => days.map((d) => d.tenants.find((x) => x.tenant === t)?.cost ?? 0)), '$');
  draw(envChart, topEnvs.map((e) => e.id.slice(0, 13)),
    topEnvs.map((e) => days.map((d) => d.environments.find((x) => x.id === e.id)?.running_hours ?? 0)), 'h');
  const onResize = () => plots.forEach((p) => p.setSize({ width: width(), height: 220 }));
  window.addEventListener('resize', onResize);
  return () => {
    window.removeEventListener('resize', onResize);
    plots.forEach((p) => p.destroy());
  };
}
