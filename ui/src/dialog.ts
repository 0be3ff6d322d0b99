// Modal dialogs on the native <dialog>: showModal() makes the rest of the page inert (focus
// stays inside) and Escape closes it; focus returns to what opened it.
import { h, type Child } from './dom';

export function openDialog(title: string, body: (close: () => void) => Child): HTMLDialogElement {
  const opener = document.activeElement as HTMLElement | null;
  const dialog = h('dialog', { 'aria-labelledby': 'dialog-title' });
  const close = () => dialog.close();
  dialog.append(
    h('h2', { id: 'dialog-title' }, title),
    h('div', { class: 'dialog-body' }, body(close)),
  );
  dialog.addEventListener('close', () => {
    dialog.remove();
    opener?.focus?.();
  });
  document.body.appendChild(dialog);
  dialog.showModal();
  const first = dialog.querySelector<HTMLElement>('input, select, textarea, button');
  first?.focus();
  return dialog;
}

export function confirmDialog(title: string, message: string, confirm: string): Promise<boolean> {
  return new Promise((resolve) => {
    let answered = false;
    const dialog = openDialog(title, (close) => [
      h('p', null, message),
      h('div', { class: 'buttons' },
        h('button', { type: 'button', onclick: () => close() }, 'Cancel'),
        h('button', { type: 'button', class: 'danger', onclick: () => { answered = true; close(); } }, confirm),
      ),
    ]);
    dialog.addEventListener('close', () => resolve(answered));
  });
}
