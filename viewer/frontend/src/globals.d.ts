// Types shared by the front end's JavaScript modules (checked with `tsc --noEmit`, see
// viewer/jsconfig.json): the modules stay plain JavaScript with JSDoc annotations.
export {};

declare global {
  /** What main.js hands every page: how to go elsewhere, and who is signed in. */
  type PageContext = { navigate: (hash: string) => void; user?: any };

  interface Window {
    /** The browser tests' hook into the viewer (main.js, pages/study.js, pages/ecg.js). */
    __rdc: Record<string, any>;
  }
}
