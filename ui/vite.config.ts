// Built by crates/lapse-server/build.rs into $LAPSE_UI_OUT (embedded in the binary), or into
// dist/ by hand. Served under /ui/ by `lapse serve`.
import { defineConfig } from 'vite';

export default defineConfig({
  base: '/ui/',
  build: {
    outDir: process.env.LAPSE_UI_OUT ?? 'dist',
    emptyOutDir: true,
    // No inline script anywhere: the CSP allows only 'self'.
    modulePreload: { polyfill: false },
    assetsInlineLimit: 0,
    sourcemap: false,
    chunkSizeWarningLimit: 1024,
  },
});
