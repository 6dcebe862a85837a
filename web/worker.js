// The training worker: the same wasm module as the page, entered at `worker_main`.
// Messages that arrive while the module loads are kept and handed over.
import init, { worker_main } from './pkg/lab_web.js';

const pending = [];
self.onmessage = (event) => pending.push(event.data);
await init({ module_or_path: './pkg/lab_web_bg.wasm' });
worker_main(pending);
