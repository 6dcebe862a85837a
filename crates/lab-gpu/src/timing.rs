//! Per-kernel GPU time from timestamp queries (adapters with TIMESTAMP_QUERY).
//!
//! Two ways, [`Method`]: where the adapter can write timestamps inside a pass (native
//! Vulkan, DX12; `TIMESTAMP_QUERY_INSIDE_PASSES`), the step runs as it normally does, one
//! pass, with a timestamp before each dispatch and after the last, so a launch's time runs
//! from the end of the work before it to its own end: its kernel plus the barrier and
//! launch gap it costs, and the launches add up to the step's GPU time. Elsewhere each
//! dispatch runs in a pass of its own with begin/end timestamps; splitting the step into
//! passes adds a little per-dispatch overhead, so those times are upper bounds.

use crate::kernels::Pipelines;
use crate::plan::Dispatch;
use crate::setup::{submit_and_read, Faults};
use lab_core::error::Result;

/// GPU time of one kernel (entry point) summed over its launches in the step.
#[derive(Debug, Clone, PartialEq)]
pub struct KernelTime {
    /// "matmul:gemm"
    pub kernel: String,
    pub launches: usize,
    pub total_us: f64,
    /// Floating-point operations of its launches (GEMMs; 0 for the others).
    pub flops: u64,
}

impl KernelTime {
    /// Achieved TFLOP/s (0 for kernels whose work is not counted in flops).
    pub fn tflops(&self) -> f64 {
        if self.total_us > 0.0 {
            self.flops as f64 / (self.total_us * 1e6)
        } else {
            0.0
        }
    }
}

/// How the launches are timed (see the module's documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// One pass, a timestamp between launches (needs TIMESTAMP_QUERY_INSIDE_PASSES).
    InsidePass,
    /// A pass per launch, begin/end timestamps (upper bounds).
    PassPerLaunch,
}

impl Method {
    /// The faithful method where `device` has it.
    pub fn best(device: &wgpu::Device) -> Method {
        if device.features().contains(wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES) {
            Method::InsidePass
        } else {
            Method::PassPerLaunch
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Method::InsidePass => "one pass, a timestamp between launches",
            Method::PassPerLaunch => "a pass per launch (upper bounds)",
        }
    }
}

/// A step's GPU time by kernel, most expensive first.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    pub method: Method,
    pub kernels: Vec<KernelTime>,
    /// Every launch in step order: kernel, workgroup grid, GPU time (µs), flops (GEMMs).
    pub launches: Vec<(String, [u32; 3], f64, u64)>,
    pub total_us: f64,
}

/// wgpu's cap on queries per set (`QUERY_SET_MAX_QUERIES`).
const QUERIES_PER_SET: usize = 4096;

/// Run `dispatches` once, timed by `method`, and sum the times per kernel.
pub fn profile(
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    faults: &Faults,
    pipelines: &Pipelines,
    dispatches: &[&Dispatch],
    method: Method,
) -> Result<Profile> {
    let mut ticks = Vec::with_capacity(dispatches.len());
    // InsidePass: n + 1 timestamps for a chunk of n; PassPerLaunch: 2 per dispatch
    let per_set = match method {
        Method::InsidePass => QUERIES_PER_SET - 1,
        Method::PassPerLaunch => QUERIES_PER_SET / 2,
    };
    for chunk in dispatches.chunks(per_set) {
        let count = match method {
            Method::InsidePass => chunk.len() as u32 + 1,
            Method::PassPerLaunch => 2 * chunk.len() as u32,
        };
        let query_set = device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("kernel timestamps"),
            ty: wgpu::QueryType::Timestamp,
            count,
        });
        let bytes = count as u64 * 8;
        let resolve = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("timestamps"),
            size: bytes,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let staging = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("timestamps readback"),
            size: bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut encoder = device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("profile") });
        match method {
            Method::InsidePass => {
                let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("profiled step"),
                    timestamp_writes: None,
                });
                for (i, d) in chunk.iter().enumerate() {
                    pass.write_timestamp(&query_set, i as u32);
                    pass.set_pipeline(pipelines.get(d.kernel));
                    pass.set_bind_group(0, &d.bind_group, &[]);
                    pass.dispatch_workgroups(d.groups[0], d.groups[1], d.groups[2]);
                }
                pass.write_timestamp(&query_set, chunk.len() as u32);
            }
            Method::PassPerLaunch => {
                for (i, d) in chunk.iter().enumerate() {
                    let timestamp_writes = wgpu::ComputePassTimestampWrites {
                        query_set: &query_set,
                        beginning_of_pass_write_index: Some(2 * i as u32),
                        end_of_pass_write_index: Some(2 * i as u32 + 1),
                    };
                    let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: Some(d.kernel.entry().1),
                        timestamp_writes: Some(timestamp_writes),
                    });
                    pass.set_pipeline(pipelines.get(d.kernel));
                    pass.set_bind_group(0, &d.bind_group, &[]);
                    pass.dispatch_workgroups(d.groups[0], d.groups[1], d.groups[2]);
                }
            }
        }
        encoder.resolve_query_set(&query_set, 0..count, &resolve, 0);
        encoder.copy_buffer_to_buffer(&resolve, 0, &staging, 0, Some(bytes));
        let stamps: Vec<u64> =
            submit_and_read(device, queue, faults, encoder, &staging, count as usize)?;
        match method {
            Method::InsidePass => {
                ticks.extend(stamps.windows(2).map(|pair| pair[1].saturating_sub(pair[0])))
            }
            Method::PassPerLaunch => {
                ticks.extend(stamps.chunks(2).map(|pair| pair[1].saturating_sub(pair[0])))
            }
        }
    }
    let ns_per_tick = queue.get_timestamp_period() as f64;
    let mut kernels: Vec<KernelTime> = Vec::new();
    let mut launches = Vec::with_capacity(dispatches.len());
    for (d, &t) in dispatches.iter().zip(&ticks) {
        let name = d.kernel.name();
        let us = t as f64 * ns_per_tick / 1e3;
        launches.push((name.clone(), d.groups, us, d.flops));
        match kernels.iter_mut().find(|k| k.kernel == name) {
            Some(k) => {
                k.launches += 1;
                k.total_us += us;
                k.flops += d.flops;
            }
            None => {
                kernels.push(KernelTime { kernel: name, launches: 1, total_us: us, flops: d.flops })
            }
        }
    }
    kernels.sort_by(|a, b| b.total_us.total_cmp(&a.total_us));
    let total_us = kernels.iter().map(|k| k.total_us).sum();
    Ok(Profile { method, kernels, launches, total_us })
}
