// Voice: talk with corral through the microphone, hands-free or push-to-talk (#/voice/SESSION).
//
// Two ways to the voice pipeline, both same-origin with the session cookie:
//   WebRTC     POST /api/voice/offer {sdp, type, session, mode} -> {sdp, type, pc_id, session};
//              the microphone goes up as a WebRTC track, corral's voice comes back as one and
//              plays in an <audio> element; the same JSON messages as below arrive on the "chat"
//              data channel (which also carries SmallWebRTC's keep-alive "ping"s).
//   WebSocket  /ws/voice: {"type":"start", session, sample_rate: 16000, mode} then 20 ms binary
//              chunks of 16 kHz PCM16 from an AudioWorklet (voice-worklet.js); corral's voice
//              comes back as PCM16 at the rate its "ready" message names and is scheduled
//              gap-free on the AudioContext's clock; {"type":"stop"} ends it.
// Messages: ready, state (idle|listening|thinking|speaking), transcript {text, final},
// answer {text, final} (pieces, then the whole answer), turn (timings in seconds), interrupted,
// error (shown; the session goes on). "Automatic" takes WebRTC where the browser has it and
// falls back to the WebSocket when the offer or the connection fails. Push-to-talk sends audio
// only while Talk is held, then a short silence so the server's turn detection ends the turn.

import { h } from "./dom.js";

const WORKLET_URL = "/ui/js/voice-worklet.js";
const OFFER_PATH = "/api/voice/offer";
const SOCKET_PATH = "/ws/voice";
const CAPTURE_RATE = 16000; // what we send over the WebSocket
const READY_TIMEOUT_MS = 45000; // the voice service may still be loading its models
const CONNECT_TIMEOUT_MS = 15000; // ICE on a LAN takes well under a second
const ICE_GATHER_MS = 2500;
const DISCONNECT_GRACE_MS = 4000;
const SPEAKING_RMS = 0.003; // corral's voice over WebRTC counts as playing above this level
const SPEAKING_HANGOVER_MS = 600; // and for this long after, across the gaps between words
const PING_MS = 1000; // SmallWebRTC counts a peer gone after 3 s without a "ping"
const PREROLL_CHUNKS = 50; // 1 s of 20 ms chunks kept while the WebSocket session starts
const PTT_TAIL_MS = 1800; // silence sent after push-to-talk is let go, so the turn ends at once
const PREFS_KEY = "corral.voice"; // mode and transport; nothing secret

const MODES = [
  ["handsfree", "Hands-free", "corral listens all the time and answers when you pause."],
  ["ptt", "Push to talk", "Hold the Talk button (or Space while it has focus) while you speak."],
];
const TRANSPORTS = [
  ["auto", "Automatic"],
  ["webrtc", "WebRTC"],
  ["websocket", "WebSocket"],
];
const METRICS = [
  ["stt_s", "Speech to text", "stt"],
  ["llm_ttft_s", "LLM first token", "llm"],
  ["tts_first_audio_s", "TTS first audio", "tts"],
  ["voice_to_voice_s", "Voice to voice", "v2v"],
];

const SVG = "http://www.w3.org/2000/svg";

/** A microphone icon (inline SVG: no emoji font needed, follows the text colour). */
function micIcon() {
  const svg = document.createElementNS(SVG, "svg");
  for (const [key, value] of Object.entries({ viewBox: "0 0 24 24", width: "1.2em", height: "1.2em", "aria-hidden": "true", focusable: "false", class: "voice-icon" })) {
    svg.setAttribute(key, value);
  }
  const shape = (tag, attrs) => {
    const el = document.createElementNS(SVG, tag);
    for (const [key, value] of Object.entries(attrs)) el.setAttribute(key, value);
    svg.append(el);
  };
  shape("rect", { x: "9", y: "3", width: "6", height: "11", rx: "3", fill: "currentColor" });
  shape("path", { d: "M6 11a6 6 0 0 0 12 0M12 17v4M8.5 21h7", fill: "none", stroke: "currentColor", "stroke-width": "2", "stroke-linecap": "round" });
  return svg;
}

function newSessionId() {
  const bytes = crypto.getRandomValues(new Uint8Array(6));
  return `v-${Array.from(bytes, (b) => b.toString(36).padStart(2, "0")).join("").slice(0, 10)}`;
}

function loadPrefs() {
  try {
    const prefs = JSON.parse(localStorage.getItem(PREFS_KEY) || "{}");
    return {
      mode: MODES.some(([v]) => v === prefs.mode) ? prefs.mode : "handsfree",
      transport: TRANSPORTS.some(([v]) => v === prefs.transport) ? prefs.transport : "auto",
    };
  } catch {
    return { mode: "handsfree", transport: "auto" };
  }
}

function savePrefs(prefs) {
  try {
    localStorage.setItem(PREFS_KEY, JSON.stringify(prefs));
  } catch {
    // private mode or storage full: the choice lasts for this page only
  }
}

const ms = (seconds) => (typeof seconds === "number" && Number.isFinite(seconds) ? Math.round(seconds * 1000) : null);
const median = (values) => {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : Math.round((sorted[mid - 1] + sorted[mid]) / 2);
};

/** A microphone error in words a person can act on. */
function micProblem(err) {
  const name = (err && err.name) || "";
  if (name === "NotAllowedError" || name === "SecurityError" || name === "PermissionDeniedError") {
    return "The browser blocked the microphone. To allow it, click the microphone (or lock) icon at the left of the address bar, set Microphone to Allow for this site, then press Start again. If you dismissed the question, reloading the page asks again.";
  }
  if (name === "NotFoundError" || name === "DevicesNotFoundError" || name === "OverconstrainedError") {
    return "No microphone was found. Plug one in (or pick one in your system's sound settings), then press Start again.";
  }
  if (name === "NotReadableError" || name === "TrackStartError" || name === "AbortError") {
    return "The microphone could not be opened: another app may be using it. Close that app, then press Start again.";
  }
  return `The microphone could not be opened: ${(err && err.message) || err}.`;
}

// --- playback of PCM over the WebSocket ------------------------------------------------------

/** Plays PCM16 chunks back to back on the AudioContext clock; stop() silences it at once. */
class Player {
  constructor(context, rate, onChange) {
    this.context = context;
    this.rate = rate;
    this.onChange = onChange;
    this.gain = context.createGain();
    this.gain.connect(context.destination);
    this.sources = new Set();
    this.until = 0; // context time at which the queued audio ends
    this.carry = null; // an odd byte left over from the last chunk
  }

  get playing() {
    return this.sources.size > 0;
  }

  play(data) {
    let bytes = new Uint8Array(data);
    if (this.carry !== null) {
      const joined = new Uint8Array(bytes.length + 1);
      joined[0] = this.carry;
      joined.set(bytes, 1);
      bytes = joined;
      this.carry = null;
    }
    if (bytes.length % 2) {
      this.carry = bytes[bytes.length - 1];
      bytes = bytes.subarray(0, bytes.length - 1);
    }
    const frames = bytes.length >> 1;
    if (!frames) return;
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
    const buffer = this.context.createBuffer(1, frames, this.rate);
    const channel = buffer.getChannelData(0);
    for (let i = 0; i < frames; i += 1) channel[i] = view.getInt16(i * 2, true) / 32768;
    const source = this.context.createBufferSource();
    source.buffer = buffer;
    source.connect(this.gain);
    const now = this.context.currentTime;
    // After a gap, start a little ahead of the clock so the first chunks do not underrun.
    if (this.until < now + 0.01) this.until = now + 0.04;
    source.start(this.until);
    this.until += buffer.duration;
    const wasPlaying = this.playing;
    this.sources.add(source);
    source.addEventListener("ended", () => {
      source.disconnect();
      if (this.sources.delete(source) && !this.sources.size) this.onChange(false);
    });
    if (!wasPlaying) this.onChange(true);
  }

  stop() {
    const had = this.playing;
    for (const source of this.sources) {
      try {
        source.stop();
      } catch {
        // not started yet or already ended
      }
      source.disconnect();
    }
    this.sources.clear();
    this.until = 0;
    this.carry = null;
    if (had) this.onChange(false);
  }

  close() {
    this.stop();
    this.gain.disconnect();
  }
}

// --- the view ---------------------------------------------------------------------------------

export async function mount(root, ctx) {
  let session = ctx.params[0] || "";
  if (!session) {
    session = newSessionId();
    history.replaceState(null, "", `#/voice/${encodeURIComponent(session)}`);
  }
  const prefs = loadPrefs();
  const cleanups = [];

  // --- layout -------------------------------------------------------------------------------
  const startBtn = h("button", { type: "button", class: "primary voice-big", testid: "voice-start" },
    micIcon(), " Start talking");
  const stopBtn = h("button", { type: "button", class: "voice-big voice-stop", testid: "voice-stop", hidden: true },
    h("span", { class: "voice-icon", "aria-hidden": "true" }, "■"), " Stop");
  const levelBar = h("span", { class: "voice-level-bar" });
  const level = h("div", {
    class: "voice-level", role: "meter", "aria-label": "Microphone level", "aria-valuemin": "0",
    "aria-valuemax": "100", "aria-valuenow": "0", testid: "voice-level", "data-active": "false",
  }, levelBar);
  const stateLine = h("p", { class: "voice-state", role: "status", testid: "voice-state", "data-conn": "off", "data-voice": "idle" }, "Off");

  const modeInputs = new Map();
  const modeSet = h("fieldset", { class: "voice-segmented", testid: "voice-mode" }, h("legend", {}, "Mode"));
  for (const [value, label, hint] of MODES) {
    const id = `voice-mode-${value}`;
    const input = h("input", { type: "radio", name: "voice-mode", id, value, testid: id, "aria-describedby": "voice-mode-hint" });
    input.checked = prefs.mode === value;
    input.dataset.hint = hint;
    modeInputs.set(value, input);
    modeSet.append(input, h("label", { for: id }, label));
  }
  const modeHint = h("p", { id: "voice-mode-hint", class: "muted small voice-hint" });
  const transportSelect = h("select", { id: "voice-transport", testid: "voice-transport" },
    ...TRANSPORTS.map(([value, label]) => h("option", { value }, label)));
  transportSelect.value = prefs.transport;
  const transportNote = h("span", { class: "muted small", testid: "voice-transport-used" });

  const pttBtn = h("button", {
    type: "button", class: "voice-ptt", testid: "voice-ptt", "aria-pressed": "false", disabled: true,
    "aria-describedby": "voice-mode-hint",
  }, "Hold to talk");

  const enginesLine = h("p", { class: "muted small voice-engines", testid: "voice-engines", "data-ready": "unknown" });
  const errorText = h("span", { class: "voice-error-text" });
  const reconnectBtn = h("button", { type: "button", class: "primary", testid: "voice-reconnect", hidden: true }, "Reconnect");
  const errorBox = h("div", { class: "voice-error", role: "alert", testid: "voice-error", hidden: true }, errorText, " ", reconnectBtn);

  const transcript = h("div", {
    class: "terminal voice-transcript", role: "log", "aria-live": "polite", "aria-label": "Voice transcript",
    tabindex: "0", testid: "voice-transcript",
  });

  const metricCells = new Map();
  const metricList = h("dl", { class: "voice-metric-list" });
  for (const [key, label, short] of METRICS) {
    const value = h("dd", { testid: `voice-metric-${short}` }, "—");
    metricCells.set(key, value);
    metricList.append(h("div", { class: `voice-metric voice-metric-${short}` }, h("dt", {}, label), value));
  }
  const metricSummary = h("p", { class: "muted small voice-metric-summary", testid: "voice-metric-summary" }, "No turns yet.");
  const metrics = h("section", { class: "voice-metrics", testid: "voice-metrics", "aria-label": "Latency of the last turn", "data-turns": "0" },
    h("h2", {}, "Last turn"), metricList, metricSummary);

  const audioEl = h("audio", { autoplay: true, testid: "voice-audio" });
  audioEl.hidden = true;

  root.append(h("div", { class: "voice", testid: "voice" },
    h("div", { class: "voice-main" },
      h("div", { class: "voice-panel" },
        h("div", { class: "voice-buttons" }, startBtn, stopBtn, pttBtn),
        h("div", { class: "voice-status" }, stateLine, level),
        h("div", { class: "voice-options" },
          modeSet,
          h("div", { class: "voice-transport" },
            h("label", { for: "voice-transport" }, "Connection"), transportSelect, transportNote)),
        modeHint,
        enginesLine,
        errorBox,
      ),
      transcript,
    ),
    h("aside", { class: "voice-side" },
      metrics,
      h("p", { class: "muted small" },
        "Everything runs on your own machines: speech is recognised and spoken by corral, offline. ",
        h("a", { href: `#/chat/${encodeURIComponent(session)}`, testid: "voice-chat-link" }, "See this session in Chat"), "."),
    ),
    audioEl,
  ));

  // --- state ----------------------------------------------------------------------------------
  let mode = prefs.mode;
  let conn = "off"; // off | connecting | connected | lost
  let serverState = "idle"; // idle | listening | thinking | speaking, as the server says
  let playing = false; // corral's voice is sounding here (WebSocket playback, or WebRTC's level)
  let held = false; // push-to-talk is down
  let tailUntil = 0; // keep sending silence after push-to-talk until then (ms clock)
  let transport = null; // {kind, setSending(bool), close()}
  let audio = null; // {context, stream, track, source, analyser, close()}
  let attempt = 0; // bumps on every start/stop: a late answer from an old attempt is dropped
  let unmounted = false;
  let voiceOff = false; // this corral has no voice routes
  let userLine = null; // the user's line being recognised (partial)
  let answerLine = null; // the assistant's line of this turn (a new user line starts a new turn)
  const turns = []; // {stt_s: ms, ...} per turn, for the medians

  function setStatus() {
    const names = { webrtc: "WebRTC", websocket: "WebSocket" };
    const via = transport ? ` · ${names[transport.kind]}` : "";
    const words = {
      off: "Off — press Start talking",
      connecting: "Connecting…",
      lost: "Disconnected",
    };
    let text = words[conn];
    if (conn === "connected") {
      const what = { listening: "listening", thinking: "thinking…", speaking: "speaking", idle: mode === "ptt" ? "ready — hold Talk to speak" : "listening" };
      const shown = playing ? "speaking" : held ? "listening" : serverState;
      text = `Connected${via} · ${what[shown] || shown}`;
    }
    stateLine.textContent = text;
    stateLine.dataset.conn = conn;
    stateLine.dataset.voice = playing ? "speaking" : serverState;
  }

  function characterState() {
    if (conn !== "connected") return "idle";
    if (playing || serverState === "speaking") return "speaking";
    if (serverState === "thinking") return "thinking";
    if (mode === "ptt") return held ? "listening" : "idle";
    return "listening";
  }

  function refresh() {
    if (unmounted) return;
    setStatus();
    ctx.character.set(characterState());
    const on = conn === "connecting" || conn === "connected";
    startBtn.hidden = on;
    stopBtn.hidden = !on;
    startBtn.disabled = voiceOff;
    pttBtn.hidden = mode !== "ptt";
    pttBtn.disabled = conn !== "connected";
    pttBtn.textContent = held ? "Talking… release to send" : "Hold to talk";
    pttBtn.setAttribute("aria-pressed", String(held));
    pttBtn.classList.toggle("held", held);
    level.dataset.active = String(Boolean(audio) && (mode === "handsfree" || held));
    if (transport) transport.setSending(mode === "handsfree" || held);
  }

  // A finished agent run resets the shared character to idle; put ours back.
  cleanups.push(ctx.live.on("event", (e) => {
    if (e && typeof e.type === "string" && e.type.startsWith("run.")) ctx.character.set(characterState());
  }));

  // The app's own socket to corral closing is the quickest sign that corral went away: WebRTC
  // itself takes ten seconds or more to notice a peer that vanished without hanging up.
  let liveGrace = null;
  cleanups.push(ctx.live.on("state", (state) => {
    if (state === "open") {
      clearTimeout(liveGrace);
      liveGrace = null;
    } else if (state === "closed" && conn === "connected" && liveGrace === null) {
      liveGrace = setTimeout(() => {
        liveGrace = null;
        if (ctx.live.state !== "open") lost("corral is not answering");
      }, DISCONNECT_GRACE_MS);
    }
  }));
  cleanups.push(() => clearTimeout(liveGrace));

  function showError(message, { reconnect = false } = {}) {
    errorText.textContent = message;
    reconnectBtn.hidden = !reconnect;
    errorBox.hidden = false;
  }

  function clearError() {
    errorText.textContent = "";
    reconnectBtn.hidden = true;
    errorBox.hidden = true;
  }

  // --- transcript -----------------------------------------------------------------------------
  function stick(fn) {
    const atBottom = transcript.scrollHeight - transcript.scrollTop - transcript.clientHeight < 48;
    const out = fn();
    if (atBottom) transcript.scrollTop = transcript.scrollHeight;
    return out;
  }

  function line(role, text) {
    const who = role === "user" ? "you" : "corral";
    const body = h("span", { class: "msg-text" }, text);
    const el = h("div", { class: `msg msg-${role}`, testid: role === "user" ? "voice-user" : "voice-assistant" },
      h("span", { class: "prompt", "aria-label": `${who}:` }, `${who} ›`), " ", body);
    stick(() => transcript.append(el));
    return { el, body };
  }

  function note(text, kind = "note") {
    const el = h("p", { class: `line line-${kind}`, testid: kind === "error" ? "voice-server-error" : "voice-note" }, text);
    stick(() => transcript.append(el));
    return el;
  }

  function onTranscript(text, final) {
    text = String(text || "").trim();
    if (!userLine) {
      if (!text) return;
      answerLine = null; // a new turn: the next answer gets a line of its own
      userLine = line("user", text);
      userLine.el.dataset.final = "false";
      userLine.el.classList.add("partial");
    } else if (text || final) {
      stick(() => {
        userLine.body.textContent = text;
      });
    }
    if (final) {
      if (!text) userLine.el.remove();
      else {
        userLine.el.dataset.final = "true";
        userLine.el.classList.remove("partial");
      }
      userLine = null;
    }
  }

  function onAnswer(text, whole = false) {
    if (!text) return;
    if (userLine && userLine.el.dataset.final === "false") {
      // The server moved on: whatever it heard last is what it answers.
      userLine.el.dataset.final = "true";
      userLine.el.classList.remove("partial");
      userLine = null;
    }
    if (!answerLine) answerLine = line("assistant", "");
    stick(() => {
      if (whole) answerLine.body.textContent = text;
      else answerLine.body.append(text);
    });
  }

  function endAnswer(interrupted = false) {
    if (answerLine && interrupted) answerLine.el.append(h("span", { class: "voice-cut muted" }, " — interrupted"));
    answerLine = null;
  }

  function onTurn(turn) {
    const entry = {};
    for (const [key] of METRICS) {
      const value = ms(turn[key]);
      entry[key] = value;
      metricCells.get(key).textContent = value === null ? "—" : `${value} ms`;
    }
    turns.push(entry);
    const v2v = turns.map((t) => t.voice_to_voice_s).filter((v) => v !== null);
    metrics.dataset.turns = String(turns.length);
    metricSummary.textContent = `${turns.length} turn${turns.length === 1 ? "" : "s"}` +
      (v2v.length ? ` · voice to voice median ${median(v2v)} ms, best ${Math.min(...v2v)} ms` : "");
  }

  // --- messages from the voice service, whichever the transport -------------------------------
  function handle(msg) {
    if (!msg || typeof msg !== "object" || unmounted) return;
    switch (msg.type) {
      case "transcript":
        onTranscript(msg.text, Boolean(msg.final));
        break;
      case "answer":
        // Pieces stream in with final: false; the final message carries the whole answer.
        onAnswer(typeof msg.text === "string" ? msg.text : "", msg.final === true);
        break;
      case "state":
        if (["idle", "listening", "thinking", "speaking"].includes(msg.state)) serverState = msg.state;
        refresh();
        break;
      case "turn":
        onTurn(msg);
        break;
      case "interrupted":
        if (transport && transport.interrupt) transport.interrupt();
        endAnswer(true);
        if (serverState === "speaking") serverState = "listening";
        refresh();
        break;
      case "error":
        note(`⚠ ${msg.message || "something went wrong in the voice pipeline"}`, "error");
        break;
      default:
        break;
    }
  }

  // --- microphone and audio context -----------------------------------------------------------
  async function openAudio(context) {
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      const err = new Error(
        "This browser gives the microphone only to secure pages. Open Mission Control over https://, " +
        "or as http://localhost on the machine running corral, then press Start again.");
      err.name = "InsecureContext";
      throw err;
    }
    const stream = await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: true, noiseSuppression: true, channelCount: 1 },
    });
    const track = stream.getAudioTracks()[0];
    const source = context.createMediaStreamSource(stream);
    const analyser = context.createAnalyser();
    analyser.fftSize = 1024;
    source.connect(analyser);
    const samples = new Float32Array(analyser.fftSize);
    let frame = 0;
    let lastAria = 0;
    const meter = () => {
      analyser.getFloatTimeDomainData(samples);
      let sum = 0;
      for (let i = 0; i < samples.length; i += 1) sum += samples[i] * samples[i];
      const rms = Math.sqrt(sum / samples.length);
      const pct = Math.max(0, Math.min(100, Math.round(((20 * Math.log10(rms + 1e-9) + 60) / 60) * 100)));
      levelBar.style.transform = `scaleX(${pct / 100})`;
      const now = performance.now();
      if (now - lastAria > 250) {
        level.setAttribute("aria-valuenow", String(pct));
        lastAria = now;
      }
      frame = requestAnimationFrame(meter);
    };
    frame = requestAnimationFrame(meter);
    return {
      context, stream, track, source, analyser,
      close() {
        cancelAnimationFrame(frame);
        levelBar.style.transform = "scaleX(0)";
        level.setAttribute("aria-valuenow", "0");
        for (const t of stream.getTracks()) t.stop();
        source.disconnect();
        if (context.state !== "closed") context.close().catch(() => {});
      },
    };
  }

  // --- WebSocket transport --------------------------------------------------------------------
  async function openSocket(a, token) {
    await a.context.audioWorklet.addModule(WORKLET_URL);
    if (token !== attempt) throw new Error("stopped");
    const tap = new AudioWorkletNode(a.context, "corral-capture", {
      numberOfInputs: 1, numberOfOutputs: 1, outputChannelCount: [1],
      processorOptions: { targetRate: CAPTURE_RATE, chunkMs: 20 },
    });
    a.source.connect(tap);
    tap.connect(a.context.destination); // silent; keeps the node pulled
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const socket = new WebSocket(`${scheme}//${location.host}${SOCKET_PATH}`);
    socket.binaryType = "arraybuffer";
    let player = null;
    let sending = mode === "handsfree";
    let ready = false;
    const preroll = []; // what the microphone heard before "ready", sent as soon as it comes
    let closedByUs = false;
    let lastError = "";
    const t = {
      kind: "websocket",
      setSending(on) {
        if (sending && !on) tailUntil = performance.now() + PTT_TAIL_MS;
        sending = on;
      },
      interrupt() {
        if (player) player.stop();
      },
      close() {
        closedByUs = true;
        tap.port.postMessage("stop");
        tap.port.onmessage = null;
        tap.disconnect();
        if (player) player.close();
        if (socket.readyState === WebSocket.OPEN) {
          try {
            socket.send(JSON.stringify({ type: "stop" }));
          } catch {
            // closing anyway
          }
        }
        if (socket.readyState <= WebSocket.OPEN) socket.close(1000, "stopped");
      },
    };
    tap.port.onmessage = (event) => {
      const { pcm } = event.data;
      if (!ready) {
        if (sending) preroll.push(pcm);
        if (preroll.length > PREROLL_CHUNKS) preroll.shift();
        return;
      }
      if (socket.readyState !== WebSocket.OPEN) return;
      if (sending) socket.send(pcm);
      else if (performance.now() < tailUntil) socket.send(new ArrayBuffer(pcm.byteLength)); // silence ends the turn
    };
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        if (ready) return;
        reject(new Error("the voice service did not say it was ready in time"));
        t.close();
      }, READY_TIMEOUT_MS);
      socket.addEventListener("open", () => {
        socket.send(JSON.stringify({ type: "start", session, sample_rate: CAPTURE_RATE, mode }));
      });
      socket.addEventListener("message", (event) => {
        if (typeof event.data !== "string") {
          if (ready && player) player.play(event.data);
          return;
        }
        let msg;
        try {
          msg = JSON.parse(event.data);
        } catch {
          return;
        }
        if (!ready && msg.type === "ready") {
          ready = true;
          clearTimeout(timer);
          for (const pcm of preroll.splice(0)) socket.send(pcm);
          const rate = Number(msg.sample_rate) || 22050;
          player = new Player(a.context, rate, (on) => {
            playing = on;
            refresh();
          });
          resolve(t);
          return;
        }
        if (!ready && msg.type === "error") {
          lastError = msg.message || ""; // said with the failure, once the socket closes
          return;
        }
        handle(msg);
      });
      socket.addEventListener("close", (event) => {
        clearTimeout(timer);
        if (!ready) {
          t.close();
          const why = lastError || event.reason || (event.code === 1008 ? "your session was refused" : "");
          reject(new Error(why ? `the voice service refused the connection: ${why}` : "could not reach corral's voice service"));
          return;
        }
        if (closedByUs) return;
        lost(event.code === 1008 ? `your session was refused (${event.reason || "log in again"})` : event.reason || "the connection closed");
      });
    });
  }

  // --- WebRTC transport -----------------------------------------------------------------------
  async function openPeer(a, token) {
    const pc = new RTCPeerConnection({ iceServers: [] });
    const sendTrack = a.track.clone();
    pc.addTransceiver(sendTrack, { direction: "sendrecv", streams: [new MediaStream([sendTrack])] });
    const channel = pc.createDataChannel("chat", { ordered: true });
    let ping = null;
    let closedByUs = false;
    let connected = false;
    let remoteSource = null; // corral's voice, measured to know when it is playing
    let hearing = null;
    const t = {
      kind: "webrtc",
      setSending(on) {
        sendTrack.enabled = on; // a disabled track sends silence: the server's VAD ends the turn
      },
      interrupt() {},
      close() {
        closedByUs = true;
        clearInterval(ping);
        clearInterval(hearing);
        if (remoteSource) remoteSource.disconnect();
        try {
          channel.close();
        } catch {
          // already closed
        }
        sendTrack.stop();
        pc.close();
        audioEl.srcObject = null;
      },
    };
    channel.addEventListener("open", () => {
      ping = setInterval(() => {
        if (channel.readyState === "open") channel.send(`ping: ${Date.now()}`);
      }, PING_MS);
    });
    let silent = null; // fires if the pipeline never says a word after the call connects
    channel.addEventListener("message", (event) => {
      if (typeof event.data !== "string") return;
      clearTimeout(silent);
      let msg;
      try {
        msg = JSON.parse(event.data);
      } catch {
        return;
      }
      if (msg.type === "signalling") {
        const inner = msg.message || {};
        if (inner.type === "peerLeft" && !closedByUs) lost("corral ended the voice call");
        return;
      }
      handle(msg);
    });
    // corral's voice: played by the <audio> element, and measured, because the server's
    // "speaking" state cannot know when the browser actually plays what it sent.
    pc.addEventListener("track", (event) => {
      if (event.track.kind !== "audio") return;
      const remote = (event.streams && event.streams[0]) || new MediaStream([event.track]);
      audioEl.srcObject = remote;
      audioEl.play().catch(() => {
        // autoplay refused: the Start click normally allows it
      });
      if (remoteSource) return;
      remoteSource = a.context.createMediaStreamSource(remote);
      const analyser = a.context.createAnalyser();
      analyser.fftSize = 512;
      remoteSource.connect(analyser);
      const samples = new Float32Array(analyser.fftSize);
      let loudAt = 0;
      hearing = setInterval(() => {
        analyser.getFloatTimeDomainData(samples);
        let sum = 0;
        for (let i = 0; i < samples.length; i += 1) sum += samples[i] * samples[i];
        const now = performance.now();
        if (Math.sqrt(sum / samples.length) > SPEAKING_RMS) loudAt = now;
        const on = now - loudAt < SPEAKING_HANGOVER_MS;
        if (on !== playing && transport === t) {
          playing = on;
          refresh();
        }
      }, 50);
    });
    try {
      const offer = await pc.createOffer();
      await pc.setLocalDescription(offer);
      await new Promise((resolve) => {
        if (pc.iceGatheringState === "complete") return resolve();
        const timer = setTimeout(resolve, ICE_GATHER_MS);
        pc.addEventListener("icegatheringstatechange", () => {
          if (pc.iceGatheringState === "complete") {
            clearTimeout(timer);
            resolve();
          }
        });
      });
      if (token !== attempt) throw new Error("stopped");
      const local = pc.localDescription;
      const answer = await ctx.api(OFFER_PATH, { body: { sdp: local.sdp, type: local.type, session, mode } });
      if (token !== attempt) throw new Error("stopped");
      if (!answer || typeof answer.sdp !== "string") throw new Error("the voice service sent no answer");
      await pc.setRemoteDescription({ sdp: answer.sdp, type: answer.type || "answer" });
      await new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error("the WebRTC connection did not come up")), CONNECT_TIMEOUT_MS);
        const check = () => {
          const state = pc.connectionState;
          if (state === "connected") {
            clearTimeout(timer);
            connected = true;
            resolve();
          } else if (state === "failed" || state === "closed") {
            clearTimeout(timer);
            reject(new Error(`the WebRTC connection ${state}`));
          }
        };
        pc.addEventListener("connectionstatechange", check);
        check();
      });
    } catch (err) {
      t.close();
      throw err;
    }
    // "disconnected" may heal by itself (a Wi-Fi hiccup); a few seconds of it means corral is gone.
    let grace = null;
    pc.addEventListener("connectionstatechange", () => {
      if (closedByUs || !connected) return;
      clearTimeout(grace);
      const state = pc.connectionState;
      if (state === "failed" || state === "closed") lost("the WebRTC connection dropped");
      else if (state === "disconnected") {
        grace = setTimeout(() => {
          if (!closedByUs && pc.connectionState !== "connected") lost("corral stopped answering");
        }, DISCONNECT_GRACE_MS);
      }
    });
    channel.addEventListener("close", () => {
      if (!closedByUs && connected) lost("corral closed the voice call");
    });
    silent = setTimeout(() => {
      if (!closedByUs) lost("corral's voice pipeline did not start; see corral's log");
    }, READY_TIMEOUT_MS);
    const close = t.close;
    t.close = () => {
      clearTimeout(grace);
      clearTimeout(silent);
      close();
    };
    return t;
  }

  // --- start, stop, lost ------------------------------------------------------------------------
  async function start() {
    if (conn === "connecting" || conn === "connected") return;
    const token = ++attempt;
    clearError();
    transportNote.textContent = "";
    serverState = "idle";
    conn = "connecting";
    refresh();
    let context;
    try {
      // Made inside the click, so the browser lets it play sound.
      context = new AudioContext({ latencyHint: "interactive" });
      if (context.state === "suspended") context.resume().catch(() => {});
    } catch (err) {
      fail(`This browser cannot process audio here: ${err.message || err}.`);
      return;
    }
    let a;
    try {
      a = await openAudio(context);
    } catch (err) {
      context.close().catch(() => {});
      if (token !== attempt) return;
      fail(err.name === "InsecureContext" ? err.message : micProblem(err));
      return;
    }
    if (token !== attempt) {
      a.close();
      return;
    }
    audio = a;
    refresh();
    const choice = transportSelect.value;
    const hasRtc = typeof window.RTCPeerConnection === "function";
    let kind = choice === "websocket" || !hasRtc ? "websocket" : "webrtc";
    if (choice === "webrtc" && !hasRtc) transportNote.textContent = "This browser has no WebRTC; using the WebSocket.";
    // A session just stopped (or dropped) may still be closing on the server: try again shortly.
    const open = async (how) => {
      for (let tries = 1; ; tries += 1) {
        try {
          return how === "webrtc" ? await openPeer(a, token) : await openSocket(a, token);
        } catch (err) {
          if (tries >= 4 || token !== attempt || !/already open/i.test(err.message || "")) throw err;
          await new Promise((resolve) => setTimeout(resolve, 1000));
        }
      }
    };
    let t = null;
    try {
      t = await open(kind);
    } catch (err) {
      if (token !== attempt) return;
      if (err.unauthorized) return; // the login screen takes over
      if (kind === "webrtc" && choice === "auto") {
        kind = "websocket";
        transportNote.textContent = `WebRTC did not work (${err.message}); using the WebSocket.`;
        try {
          t = await open("websocket");
        } catch (err2) {
          if (token !== attempt) return;
          fail(`Could not start the voice session: ${err2.message}.`, true);
          return;
        }
      } else {
        fail(`Could not start the voice session: ${err.message}.`, true);
        return;
      }
    }
    if (token !== attempt) {
      t.close();
      return;
    }
    transport = t;
    conn = "connected";
    serverState = "idle";
    refresh();
    note(mode === "ptt"
      ? "Connected. Hold Talk (or Space on it) while you speak; let go to send."
      : "Connected. Speak whenever you like; corral answers when you pause.");
    if (mode === "ptt") pttBtn.focus();
  }

  function teardown() {
    const t = transport;
    transport = null;
    if (t) t.close();
    const a = audio;
    audio = null;
    if (a) a.close();
    held = false;
    tailUntil = 0;
    playing = false;
    serverState = "idle";
    userLine = null;
    answerLine = null;
  }

  function stop() {
    attempt += 1;
    const was = conn;
    teardown();
    conn = "off";
    refresh();
    if (was === "connected") note("Stopped. The microphone is off.");
    if (!unmounted) startBtn.focus();
  }

  function fail(message, reconnect = false) {
    teardown();
    conn = "off";
    refresh();
    showError(message, { reconnect });
  }

  function lost(reason) {
    if (conn !== "connected") return;
    attempt += 1;
    teardown();
    conn = "lost";
    refresh();
    showError(`Lost the voice connection to corral (${reason}). The microphone is off.`, { reconnect: true });
    // A refused socket may mean the login ended: /api/me's 401 brings the login screen back.
    ctx.api("/api/me").catch(() => {});
  }

  startBtn.addEventListener("click", () => start());
  stopBtn.addEventListener("click", () => stop());
  reconnectBtn.addEventListener("click", () => start());

  // --- mode and transport -----------------------------------------------------------------------
  function showHint() {
    modeHint.textContent = modeInputs.get(mode).dataset.hint;
  }
  for (const [value, input] of modeInputs) {
    input.addEventListener("change", () => {
      if (!input.checked) return;
      mode = value;
      held = false;
      savePrefs({ mode, transport: transportSelect.value });
      showHint();
      refresh();
    });
  }
  transportSelect.addEventListener("change", () => {
    savePrefs({ mode, transport: transportSelect.value });
    if (conn === "connected" || conn === "connecting") transportNote.textContent = "The new connection type applies from the next Start.";
  });
  showHint();

  // --- push to talk -------------------------------------------------------------------------------
  function press() {
    if (mode !== "ptt" || conn !== "connected" || held) return;
    held = true;
    if (transport && transport.interrupt && playing) transport.interrupt(); // talking over corral stops it
    refresh();
  }
  function release() {
    if (!held) return;
    held = false;
    refresh();
  }
  pttBtn.addEventListener("pointerdown", (event) => {
    if (event.button !== 0) return;
    event.preventDefault();
    try {
      pttBtn.setPointerCapture(event.pointerId);
    } catch {
      // the pointer went away already
    }
    pttBtn.focus();
    press();
  });
  for (const kind of ["pointerup", "pointercancel", "lostpointercapture"]) pttBtn.addEventListener(kind, release);
  pttBtn.addEventListener("keydown", (event) => {
    if (event.key !== " " && event.key !== "Enter") return;
    event.preventDefault();
    if (!event.repeat) press();
  });
  pttBtn.addEventListener("keyup", (event) => {
    if (event.key !== " " && event.key !== "Enter") return;
    event.preventDefault();
    release();
  });
  pttBtn.addEventListener("blur", release);
  pttBtn.addEventListener("contextmenu", (event) => event.preventDefault()); // a long press on a phone

  const onHide = () => {
    if (document.hidden) release();
  };
  document.addEventListener("visibilitychange", onHide);
  cleanups.push(() => document.removeEventListener("visibilitychange", onHide));

  // --- the speech engines: loaded in the background after corral starts ----------------------
  let enginesTimer = null;
  async function checkEngines() {
    enginesTimer = null;
    let status;
    try {
      status = await ctx.api("/api/voice");
    } catch (err) {
      if (unmounted || err.unauthorized) return;
      enginesLine.dataset.ready = "false";
      if (err.status === 404) {
        enginesLine.textContent = "Voice is turned off on this corral (voice.enabled in corral.yaml).";
        voiceOff = true;
        refresh();
        return;
      }
      enginesLine.textContent = `Could not ask corral about its speech models: ${err.message}`;
      enginesTimer = setTimeout(checkEngines, 5000);
      return;
    }
    if (unmounted) return;
    if (status.ready) {
      enginesLine.dataset.ready = "true";
      enginesLine.textContent = `Speech to text: ${status.stt} · voice: ${status.tts} · workflow: ${status.workflow}`;
      if (status.workflow_error) showError(`${status.workflow_error}. Save that workflow, or set voice.workflow in corral.yaml.`);
    } else if (status.error) {
      enginesLine.dataset.ready = "false";
      enginesLine.textContent = "";
      showError(`corral's speech models did not load: ${status.error}`);
    } else {
      enginesLine.dataset.ready = "loading";
      enginesLine.textContent = "corral is still loading its speech models; Start waits for them.";
      enginesTimer = setTimeout(checkEngines, 2000);
    }
  }
  cleanups.push(() => clearTimeout(enginesTimer));
  checkEngines();

  note(`Voice session ${session}. Press Start talking and allow the microphone when the browser asks.`);
  refresh();

  return () => {
    unmounted = true;
    attempt += 1;
    teardown();
    conn = "off";
    for (const fn of cleanups) fn();
    ctx.character.set("idle");
  };
}
