// Types shared by the front end's JavaScript modules (checked with `tsc --noEmit`, see
// viewer/jsconfig.json): the modules stay plain JavaScript with JSDoc annotations.
export {};

declare global {
  /** What dom.js's h(), append() and replace() take as children: nodes, text (strings,
   * numbers), nested arrays, and null/undefined/false for "nothing here". */
  type DomChild = Node | string | number | boolean | null | undefined | readonly DomChild[];

  /** What main.js hands every page: how to go elsewhere, and who is signed in. */
  type PageContext = { navigate: (hash: string) => void; user?: any };

  /** True in the test build only (`vite build --mode test`, vite.config.js): the browser
   * tests' hook is built under `if (__RDC_TEST_HOOKS__)`, which production drops. */
  const __RDC_TEST_HOOKS__: boolean;

  /** The browser tests' hook into the pages (main.js, pages/study/state.js, pages/ecg.js). */
  type RdcTestHook = {
    viewportReady: Promise<unknown>;
    renderedImageCount: number;
    getViewport: () => any;
    getPriorViewport?: () => any;
    nonBlankPixelCount?: () => number;
    priorNonBlankPixelCount?: () => number;
    segOverlayPixels?: () => number;
    segSliceIndices?: () => number[];
    imageExtent?: () => unknown;
    priorImageExtent?: () => unknown;
    ecgNonBlankPixels?: () => number;
    /** The pathology case page's first slide viewer (pages/pathology_case.js). */
    slideViewer?: {
      ready: Promise<unknown>;
      /** Every view on the page has the tiles of what it shows (ready: every view is open). */
      fullyLoaded: () => boolean;
      /** Show a server pyramid level (0 = full resolution) 1:1; resolves once its tiles are in. */
      zoomTo: (level: number) => Promise<void>;
      /** Centre the view on a point of the viewer element (CSS pixels from its top left). */
      panToElement: (x: number, y: number) => void;
      viewer: unknown;
      views: () => number;
    };
  };

  interface Window {
    /** The browser tests' hook: set in test builds only. */
    __rdc?: RdcTestHook;
  }
}
