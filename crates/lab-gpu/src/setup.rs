//! Finding an adapter, opening a device with the limits the kernels need, and turning
//! wgpu's asynchronous failures (validation errors, device loss, a map that never
//! completes) into [`LabError`] values a user can act on instead of panics or hangs.

use lab_core::error::{LabError, Result};
use std::sync::{Arc, Mutex};

/// Device limits the kernels need whatever the model size; the size-dependent ones
/// (largest buffer, workgroup counts) are checked where buffers and grids are made.
/// Each entry: (name as in `wgpu::Limits` and the WebGPU spec, needed value, accessor).
#[allow(clippy::type_complexity)]
const FIXED_NEEDS: [(&str, u32, fn(&wgpu::Limits) -> u32); 6] = [
    // matmul.wgsl and layernorm.wgsl's forward and backward_dinp bind seven storage buffers
    ("max_storage_buffers_per_shader_stage", 7, |l| l.max_storage_buffers_per_shader_stage),
    // matmul.wgsl: @workgroup_size(16, 16)
    ("max_compute_invocations_per_workgroup", 256, |l| l.max_compute_invocations_per_workgroup),
    ("max_compute_workgroup_size_x", 64, |l| l.max_compute_workgroup_size_x),
    ("max_compute_workgroup_size_y", 16, |l| l.max_compute_workgroup_size_y),
    // matmul.wgsl: two 16×68 f32 tiles (the largest workgroup memory of any kernel)
    ("max_compute_workgroup_storage_size", 8704, |l| l.max_compute_workgroup_storage_size),
    ("max_uniform_buffer_binding_size", 256, |l| {
        l.max_uniform_buffer_binding_size.min(u32::MAX as u64) as u32
    }),
];

/// Check the fixed needs against an adapter's (or device's) limits, naming the first
/// limit that is too small and the value needed.
pub fn check_limits(limits: &wgpu::Limits, adapter_name: &str) -> Result<()> {
    for (name, needed, get) in FIXED_NEEDS {
        let have = get(limits);
        if have < needed {
            return Err(LabError::Engine { msg: format!("adapter {adapter_name:?}: limit {name} is {have}, the GPU engine needs at least {needed}") });
        }
    }
    Ok(())
}

/// Check that one buffer of `bytes` can be created and bound as storage.
pub fn check_buffer_size(limits: &wgpu::Limits, what: &str, bytes: u64) -> Result<()> {
    if bytes > limits.max_storage_buffer_binding_size {
        return Err(LabError::Engine {
            msg: format!("{what} needs a {bytes}-byte storage buffer, over this device's limit max_storage_buffer_binding_size = {}; use a smaller model or batch", limits.max_storage_buffer_binding_size),
        });
    }
    if bytes > limits.max_buffer_size {
        return Err(LabError::Engine {
            msg: format!(
                "{what} needs a {bytes}-byte buffer, over this device's limit max_buffer_size = {}",
                limits.max_buffer_size
            ),
        });
    }
    Ok(())
}

/// What to tell a user when no adapter is found.
pub fn no_adapter_message(err: &dyn std::fmt::Display) -> String {
    format!(
        "no GPU adapter found ({err}). Natively, install a Vulkan driver (on Debian/Ubuntu without a GPU: `apt-get install mesa-vulkan-drivers libvulkan1` for Mesa's lavapipe CPU driver); in the browser, use one with WebGPU enabled"
    )
}

/// Open a device on `adapter`, asking for everything it offers (so large models fit) and
/// timestamp queries when it has them, after checking the fixed needs.
pub async fn open_device(adapter: &wgpu::Adapter) -> Result<(wgpu::Device, wgpu::Queue)> {
    let info = adapter.get_info();
    let limits = adapter.limits();
    check_limits(&limits, &info.name)?;
    let required_features = adapter.features()
        & (wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES);
    let desc = wgpu::DeviceDescriptor {
        label: Some("alignlab"),
        required_features,
        required_limits: limits,
        ..Default::default()
    };
    adapter.request_device(&desc).await.map_err(|err| LabError::Engine {
        msg: format!("could not open a device on {:?}: {err}", info.name),
    })
}

/// Errors wgpu reports outside any call (validation errors, device loss), collected so the
/// next engine call returns them instead of wgpu's default panic.
#[derive(Clone, Default)]
pub struct Faults(Arc<Mutex<Vec<String>>>);

impl Faults {
    pub fn install(device: &wgpu::Device) -> Faults {
        let faults = Faults::default();
        let sink = faults.clone();
        device.on_uncaptured_error(Arc::new(move |err: wgpu::Error| {
            sink.push(format!("GPU error: {err}"))
        }));
        let sink = faults.clone();
        device.set_device_lost_callback(move |reason, msg| {
            sink.push(format!("GPU device lost ({reason:?}): {msg}"))
        });
        faults
    }

    fn push(&self, msg: String) {
        if let Ok(mut list) = self.0.lock() {
            list.push(msg);
        }
    }

    /// The first fault since the last check, as an error.
    pub fn check(&self) -> Result<()> {
        let mut list = self
            .0
            .lock()
            .map_err(|_| LabError::Engine { msg: "GPU fault list poisoned".into() })?;
        if list.is_empty() {
            return Ok(());
        }
        let msg = list.join("; ");
        list.clear();
        Err(LabError::Engine { msg })
    }
}

/// How long a readback waits for the GPU before calling the device hung or lost. Long,
/// because lavapipe runs medium-sized steps on a CPU.
#[cfg(not(target_arch = "wasm32"))]
const READBACK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

/// A readback in flight: the submission, and the map request whose callback reports
/// through `mapped`.
struct Mapping<'a> {
    index: wgpu::SubmissionIndex,
    slice: wgpu::BufferSlice<'a>,
    bytes: u64,
    mapped: futures_channel::oneshot::Receiver<std::result::Result<(), wgpu::BufferAsyncError>>,
}

/// Submit `encoder` (which must end with a copy of the wanted bytes into `staging`) and ask
/// for `staging` to be mapped once the GPU is done.
fn submit_and_map<'a, T>(
    queue: &wgpu::Queue,
    encoder: wgpu::CommandEncoder,
    staging: &'a wgpu::Buffer,
    len: usize,
) -> Mapping<'a> {
    let bytes = (len * std::mem::size_of::<T>()) as u64;
    let index = queue.submit([encoder.finish()]);
    let slice = staging.slice(..bytes.max(4));
    let (sender, mapped) = futures_channel::oneshot::channel();
    slice.map_async(wgpu::MapMode::Read, move |result| {
        let _ = sender.send(result);
    });
    Mapping { index, slice, bytes, mapped }
}

/// Block until the GPU has run the submission (native: wgpu runs map callbacks inside
/// `poll`). After it the map callback has run, unless the device was lost.
#[cfg(not(target_arch = "wasm32"))]
fn wait_for(device: &wgpu::Device, faults: &Faults, index: wgpu::SubmissionIndex) -> Result<()> {
    let polled = device.poll(wgpu::PollType::Wait {
        submission_index: Some(index),
        timeout: Some(READBACK_TIMEOUT),
    });
    faults.check()?;
    polled.map(|_| ()).map_err(|err| LabError::Engine {
        msg: format!("waiting for the GPU failed ({err}); the device may be lost or hung"),
    })
}

/// The values of a mapped readback, after the map callback reported `result`.
fn read_mapped<T: bytemuck::Pod>(
    faults: &Faults,
    staging: &wgpu::Buffer,
    slice: wgpu::BufferSlice<'_>,
    bytes: u64,
    result: Option<std::result::Result<(), wgpu::BufferAsyncError>>,
) -> Result<Vec<T>> {
    match result {
        Some(Ok(())) => {}
        Some(Err(err)) => {
            faults.check()?;
            return Err(LabError::Engine {
                msg: format!("reading results back from the GPU failed: {err}"),
            });
        }
        None => {
            faults.check()?;
            return Err(LabError::Engine {
                msg: "the GPU finished but the readback never completed; the device may be lost"
                    .into(),
            });
        }
    }
    let values = {
        let view = slice.get_mapped_range().map_err(|err| LabError::Engine {
            msg: format!("mapping the readback buffer failed: {err}"),
        })?;
        bytemuck::cast_slice::<u8, T>(&view[..bytes as usize]).to_vec()
    };
    staging.unmap();
    faults.check()?;
    Ok(values)
}

/// Submit `encoder` (which must end with a copy of the wanted bytes into `staging`), wait
/// for it, and return the first `len` values of `staging`. The step's only GPU→CPU sync.
#[cfg(not(target_arch = "wasm32"))]
pub fn submit_and_read<T: bytemuck::Pod>(
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    faults: &Faults,
    encoder: wgpu::CommandEncoder,
    staging: &wgpu::Buffer,
    len: usize,
) -> Result<Vec<T>> {
    let mut m = submit_and_map::<T>(queue, encoder, staging, len);
    wait_for(device, faults, m.index)?;
    let result = m.mapped.try_recv().ok().flatten();
    read_mapped(faults, staging, m.slice, m.bytes, result)
}

/// A readback submitted and not yet waited for: the caller can put other GPU work in flight
/// first (the GPU bench submits a step before reading the previous one; an evaluation's
/// forwards are all submitted before any is read).
pub struct InFlight {
    index: wgpu::SubmissionIndex,
    staging: wgpu::Buffer,
    bytes: u64,
    mapped: futures_channel::oneshot::Receiver<std::result::Result<(), wgpu::BufferAsyncError>>,
}

/// The first half of [`submit_and_read`]: submit and request the map.
pub fn submit_for_read<T: bytemuck::Pod>(
    queue: &wgpu::Queue,
    encoder: wgpu::CommandEncoder,
    staging: &wgpu::Buffer,
    len: usize,
) -> InFlight {
    let m = submit_and_map::<T>(queue, encoder, staging, len);
    InFlight { index: m.index, staging: staging.clone(), bytes: m.bytes, mapped: m.mapped }
}

/// The second half of [`submit_and_read`]: wait, then read.
#[cfg(not(target_arch = "wasm32"))]
pub fn finish_read<T: bytemuck::Pod>(
    device: &wgpu::Device,
    faults: &Faults,
    mut r: InFlight,
) -> Result<Vec<T>> {
    wait_for(device, faults, r.index)?;
    let result = r.mapped.try_recv().ok().flatten();
    read_mapped(faults, &r.staging, r.staging.slice(..r.bytes.max(4)), r.bytes, result)
}

/// [`finish_read`], awaitable (natively the device is polled until the work is done; in the
/// browser the page's event loop runs the map callback).
pub async fn finish_read_async<T: bytemuck::Pod>(
    device: &wgpu::Device,
    faults: &Faults,
    r: InFlight,
) -> Result<Vec<T>> {
    #[cfg(not(target_arch = "wasm32"))]
    wait_for(device, faults, r.index.clone())?;
    #[cfg(target_arch = "wasm32")]
    let _ = (device, &r.index);
    // a dropped sender (the callback never ran) reads as "never completed"
    let result = r.mapped.await.ok();
    read_mapped(faults, &r.staging, r.staging.slice(..r.bytes.max(4)), r.bytes, result)
}

/// In the browser a readback can only be awaited: the synchronous [`lab_core::Engine`]
/// calls that need one report this, naming the async twin to use.
#[cfg(target_arch = "wasm32")]
pub fn submit_and_read<T: bytemuck::Pod>(
    _device: &wgpu::Device,
    _queue: &wgpu::Queue,
    _faults: &Faults,
    _encoder: wgpu::CommandEncoder,
    _staging: &wgpu::Buffer,
    _len: usize,
) -> Result<Vec<T>> {
    Err(LabError::Engine { msg: "the browser cannot wait for the GPU synchronously; use the engine's async calls (forward_async, hidden_states_async, params_async)".into() })
}

/// [`submit_and_read`], awaitable. Natively the device is polled until the work is done
/// (so the future is complete when first polled); in the browser the page's event loop
/// runs the map callback, and awaiting yields to it.
pub async fn submit_and_read_async<T: bytemuck::Pod>(
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    faults: &Faults,
    encoder: wgpu::CommandEncoder,
    staging: &wgpu::Buffer,
    len: usize,
) -> Result<Vec<T>> {
    let m = submit_and_map::<T>(queue, encoder, staging, len);
    #[cfg(not(target_arch = "wasm32"))]
    wait_for(device, faults, m.index)?;
    #[cfg(target_arch = "wasm32")]
    let _ = (device, m.index);
    // a dropped sender (the callback never ran) reads as "never completed"
    let result = m.mapped.await.ok();
    read_mapped(faults, staging, m.slice, m.bytes, result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_limit_is_named_with_the_value_needed() {
        let limits =
            wgpu::Limits { max_storage_buffers_per_shader_stage: 4, ..wgpu::Limits::default() };
        let err = check_limits(&limits, "tiny adapter").unwrap_err().to_string();
        assert!(
            err.contains("max_storage_buffers_per_shader_stage is 4") && err.contains("at least 7"),
            "{err}"
        );
        assert!(
            check_limits(&wgpu::Limits::default(), "webgpu defaults").is_ok(),
            "WebGPU's default limits must suffice"
        );
        let err = check_buffer_size(&wgpu::Limits::default(), "activation att", 1 << 40)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("max_storage_buffer_binding_size = 134217728")
                && err.contains("activation att"),
            "{err}"
        );
    }
}
