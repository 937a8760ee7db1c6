// DOM helpers shared by every view: build elements, replace children, load a script or a
// stylesheet once. No dependencies, so any view can import it without pulling in a library.

/** Build an element: h("button", {class: "x", dataset: {testid: "y"}, onclick: fn}, "text", child). */
export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key === "testid") node.dataset.testid = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on") && typeof value === "function") node.addEventListener(key.slice(2), value);
    else if (key === "value" || key === "checked" || key === "disabled" || key === "hidden" || key === "selected") node[key] = value;
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** Replace an element's children, skipping null/false/undefined (replaceChildren would print "null"). */
export function fill(el, ...children) {
  el.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false));
  return el;
}

const loading = new Map();

/** Inject a <script src> once; resolves to window[globalName]. */
export function loadScript(src, globalName) {
  if (globalName && window[globalName]) return Promise.resolve(window[globalName]);
  if (!loading.has(src)) {
    loading.set(
      src,
      new Promise((resolve, reject) => {
        const script = document.createElement("script");
        script.src = src;
        script.async = true;
        script.addEventListener("load", () => resolve(globalName ? window[globalName] : undefined));
        script.addEventListener("error", () => {
          loading.delete(src);
          script.remove();
          reject(new Error(`could not load ${src}; reload the page`));
        });
        document.head.append(script);
      }),
    );
  }
  return loading.get(src);
}

/** Inject a stylesheet <link> once. */
export function ensureCss(href) {
  if (document.querySelector(`link[data-corral-css="${href}"]`)) return;
  const link = document.createElement("link");
  link.rel = "stylesheet";
  link.href = href;
  link.dataset.corralCss = href;
  document.head.append(link);
}
