// A plain data table: headers and rows of cells (text or nodes), cards on a phone.
import { h, type Child } from '../dom';

export function table(caption: string, headers: string[], rows: Child[][]): HTMLElement {
  return h('div', { class: 'table-wrap' }, h('table', null,
    h('caption', { class: 'sr-only' }, caption),
    h('thead', null, h('tr', null, ...headers.map((c) => h('th', { scope: 'col' }, c)))),
    h('tbody', null, rows.length
      ? rows.map((cells) => h('tr', null, ...cells.map((c, i) => h('td', { 'data-label': headers[i] }, c))))
      : h('tr', null, h('td', { colspan: headers.length, class: 'empty' }, 'Nothing here.')))));
}

export function yes(b: boolean | null | undefined): HTMLElement {
  return h('span', { class: `badge ${b ? 'badge-running' : 'badge-failed'}` }, b ? 'yes' : 'no');
}
