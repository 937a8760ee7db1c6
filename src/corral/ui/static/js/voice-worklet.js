// The Voice page's microphone tap (an AudioWorkletProcessor, loaded by voice.js with
// audioWorklet.addModule). It takes the microphone at the AudioContext's own rate (44.1 or 48 kHz
// as a rule), low-passes it below the target Nyquist frequency, resamples it to 16 kHz and posts
// 20 ms chunks of 16-bit little-endian mono PCM to the page, each with its RMS level:
//   port.postMessage({pcm: ArrayBuffer, level: Number}, [pcm])
// The page sends "stop" to end it. Nothing is played: the output stays silent.

const DEFAULTS = { targetRate: 16000, chunkMs: 20 };

/** A windowed-sinc low-pass filter (Blackman window), normalised to unit gain at DC. */
function lowPass(cutoff, taps) {
  const h = new Float32Array(taps);
  const mid = (taps - 1) / 2;
  let sum = 0;
  for (let i = 0; i < taps; i += 1) {
    const x = i - mid;
    const sinc = x === 0 ? 2 * Math.PI * cutoff : Math.sin(2 * Math.PI * cutoff * x) / x;
    const w = 0.42 - 0.5 * Math.cos((2 * Math.PI * i) / (taps - 1)) + 0.08 * Math.cos((4 * Math.PI * i) / (taps - 1));
    h[i] = sinc * w;
    sum += h[i];
  }
  for (let i = 0; i < taps; i += 1) h[i] /= sum;
  return h;
}

class CorralCapture extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const opts = { ...DEFAULTS, ...((options && options.processorOptions) || {}) };
    this.outRate = opts.targetRate;
    this.step = sampleRate / this.outRate; // input samples per output sample (3 at 48 kHz)
    this.chunk = Math.max(1, Math.round((this.outRate * opts.chunkMs) / 1000)); // 320 at 16 kHz
    // Anti-aliasing only where we go down in rate: cut at 90 % of the new Nyquist frequency.
    if (this.step > 1.0001) {
      const taps = Math.min(95, Math.max(15, Math.ceil(this.step * 16) | 1));
      this.fir = lowPass((0.45 * this.outRate) / sampleRate, taps);
    } else {
      this.fir = null;
    }
    this.history = new Float32Array(this.fir ? this.fir.length - 1 : 0); // raw input carried over
    this.work = null; // history + block, reused
    this.filtered = null;
    this.prev = 0; // the last filtered sample of the previous block (position -1)
    this.pos = 0; // where the next output sample falls, in input samples from this block's start
    this.out = new Int16Array(this.chunk);
    this.fill = 0;
    this.sumSquares = 0;
    this.alive = true;
    this.port.onmessage = (event) => {
      if (event.data === "stop") this.alive = false;
    };
  }

  _filter(input) {
    const n = input.length;
    if (!this.fir) return input;
    const taps = this.fir.length;
    const keep = taps - 1;
    if (!this.work || this.work.length !== keep + n) {
      this.work = new Float32Array(keep + n);
      this.filtered = new Float32Array(n);
    }
    const work = this.work;
    work.set(this.history, 0);
    work.set(input, keep);
    const h = this.fir;
    const y = this.filtered;
    for (let i = 0; i < n; i += 1) {
      let acc = 0;
      for (let k = 0; k < taps; k += 1) acc += h[k] * work[i + k];
      y[i] = acc;
    }
    this.history.set(work.subarray(n, n + keep));
    return y;
  }

  _emit(sample) {
    const s = sample > 1 ? 1 : sample < -1 ? -1 : sample;
    this.out[this.fill] = s < 0 ? s * 0x8000 : s * 0x7fff;
    this.sumSquares += s * s;
    this.fill += 1;
    if (this.fill === this.chunk) {
      const level = Math.sqrt(this.sumSquares / this.chunk);
      const pcm = this.out.buffer;
      this.port.postMessage({ pcm, level }, [pcm]);
      this.out = new Int16Array(this.chunk);
      this.fill = 0;
      this.sumSquares = 0;
    }
  }

  process(inputs) {
    if (!this.alive) return false;
    const input = inputs[0];
    if (!input || !input.length || !input[0].length) return true;
    let mono = input[0];
    if (input.length > 1) {
      // A stereo microphone: average the channels.
      mono = new Float32Array(input[0].length);
      for (const channel of input) for (let i = 0; i < mono.length; i += 1) mono[i] += channel[i] / input.length;
    }
    const y = this._filter(mono);
    const n = y.length;
    // Linear interpolation over the filtered stream; position -1 is the previous block's last sample.
    let pos = this.pos;
    while (pos < n - 1) {
      const i = Math.floor(pos);
      const frac = pos - i;
      const a = i < 0 ? this.prev : y[i];
      const b = y[i + 1];
      this._emit(a + (b - a) * frac);
      pos += this.step;
    }
    this.pos = pos - n;
    this.prev = y[n - 1];
    return true;
  }
}

registerProcessor("corral-capture", CorralCapture);
