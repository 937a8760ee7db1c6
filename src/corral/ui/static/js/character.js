// Corral's character: a small llama drawn as inline SVG and animated with CSS (see app.css,
// "character"). One state at a time, named by data-state, the aria-label and a caption:
//   idle (breathing, blinking), listening (ears up, sound waves), thinking (eyes wander, thought dots),
//   speaking (mouth moves), waiting (raised hand and an amber question mark: approval needed).

const SVG = "http://www.w3.org/2000/svg";

export const STATES = {
  idle: { label: "Corral is idle", caption: "idle" },
  listening: { label: "Corral is listening", caption: "listening" },
  thinking: { label: "Corral is thinking", caption: "thinking…" },
  speaking: { label: "Corral is speaking", caption: "speaking" },
  waiting: { label: "Corral is waiting for your approval", caption: "needs approval" },
};

function node(tag, attrs = {}, children = []) {
  const el = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) el.setAttribute(key, String(value));
  for (const child of children) el.append(child);
  return el;
}

function drawing() {
  const ear = (side) => {
    const x = side === "l" ? 44 : 76;
    const tilt = side === "l" ? -14 : 14;
    // The tilt sits on an outer group: a CSS animation on the inner one would replace it.
    return node("g", { transform: `rotate(${tilt} ${x} 30)` }, [
      node("g", { class: `ear ear-${side}` }, [
        node("ellipse", { cx: x, cy: 22, rx: 7, ry: 15, class: "fur" }),
        node("ellipse", { cx: x, cy: 23, rx: 3.5, ry: 10, class: "inner" }),
      ]),
    ]);
  };
  const wave = (d) => node("path", { d, class: "wave" });
  return node("svg", { viewBox: "0 0 120 100", width: "100%", height: "100%", "aria-hidden": "true", focusable: "false" }, [
    node("g", { class: "waves" }, [
      wave("M26 40 Q18 52 26 64"),
      wave("M17 33 Q5 52 17 71"),
      wave("M94 40 Q102 52 94 64"),
      wave("M103 33 Q115 52 103 71"),
    ]),
    node("g", { class: "body" }, [
      node("path", { class: "fur neck", d: "M44 74 L42 100 L78 100 L76 74 Z" }),
      ear("l"),
      ear("r"),
      node("ellipse", { class: "fur head", cx: 60, cy: 52, rx: 25, ry: 27 }),
      node("path", { class: "tuft", d: "M50 28 Q54 20 60 27 Q65 19 70 28 Q62 33 50 28 Z" }),
      node("ellipse", { class: "muzzle", cx: 60, cy: 68, rx: 15, ry: 12 }),
      node("g", { class: "eyes" }, [
        node("circle", { class: "eye", cx: 50, cy: 48, r: 3.8 }),
        node("circle", { class: "eye", cx: 70, cy: 48, r: 3.8 }),
        node("circle", { class: "glint", cx: 51.3, cy: 46.6, r: 1.1 }),
        node("circle", { class: "glint", cx: 71.3, cy: 46.6, r: 1.1 }),
      ]),
      node("circle", { class: "nostril", cx: 56, cy: 64, r: 1.3 }),
      node("circle", { class: "nostril", cx: 64, cy: 64, r: 1.3 }),
      node("path", { class: "mouth-line", d: "M54 72 Q60 77 66 72" }),
      node("ellipse", { class: "mouth-open", cx: 60, cy: 73.5, rx: 5, ry: 3.4 }),
    ]),
    node("g", { class: "dots" }, [
      node("circle", { class: "dot dot-1", cx: 92, cy: 26, r: 3.2 }),
      node("circle", { class: "dot dot-2", cx: 101, cy: 16, r: 4.2 }),
      node("circle", { class: "dot dot-3", cx: 112, cy: 6, r: 5.2 }),
    ]),
    node("g", { class: "hand" }, [
      node("rect", { x: 97, y: 62, width: 7, height: 30, rx: 3 }),
      node("rect", { x: 93, y: 45, width: 15, height: 19, rx: 6 }),
      node("rect", { x: 93, y: 37, width: 3.4, height: 11, rx: 1.7 }),
      node("rect", { x: 97, y: 35, width: 3.4, height: 12, rx: 1.7 }),
      node("rect", { x: 101, y: 36, width: 3.4, height: 11, rx: 1.7 }),
      node("rect", { x: 105, y: 39, width: 3.4, height: 10, rx: 1.7 }),
    ]),
    node("text", { class: "question", x: 10, y: 30 }, ["?"]),
  ]);
}

/**
 * Build the character. Returns {el, set(state), get state}; `el` holds the picture
 * (role="img", data-testid="character", data-state) and a short visible caption.
 */
export function createCharacter(initial = "idle") {
  const wrap = document.createElement("span");
  wrap.className = "character-wrap";
  const figure = document.createElement("span");
  figure.className = "character";
  figure.setAttribute("role", "img");
  figure.dataset.testid = "character";
  figure.append(drawing());
  const caption = document.createElement("span");
  caption.className = "character-caption";
  caption.setAttribute("aria-hidden", "true");
  wrap.append(figure, caption);

  let current = "";
  const set = (state) => {
    if (!STATES[state]) state = "idle";
    if (state === current) return;
    current = state;
    figure.dataset.state = state;
    figure.setAttribute("aria-label", STATES[state].label);
    caption.textContent = STATES[state].caption;
  };
  set(initial);
  return {
    el: wrap,
    set,
    get state() {
      return current;
    },
  };
}
