//! Per-kernel GPU time from timestamp queries (adapters with TIMESTAMP_QUERY). Each dispatch
//! of a step runs in its own compute pass with begin/end timestamps, which needs no
//! timestamps inside passes (a native-only extension). Splitting the step into passes adds
//! a little per-dispatch overhead, so the total is an upper bound on the fused step's GPU
//! time; what the profile is for is the split by kernel.

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
}

/// A step's GPU time by kernel, most expensive first.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    pub kernels: Vec<KernelTime>,
    /// Every launch in step order: kernel, workgroup grid, GPU time (µs).
    pub launches: Vec<(String, [u32; 3], f64)>,
    pub total_us: f64,
}

/// wgpu's cap on queries per set (`QUERY_SET_MAX_QUERIES`); two per dispatch.
const DISPATCHES_PER_SET: usize = 2048;

/// Run `dispatches` once, each in its own timed pass, and sum the times per kernel.
pub fn profile(device: &wgpu::Device, queue: &wgpu::Queue, faults: &Faults, pipelines: &Pipelines, dispatches: &[&Dispatch]) -> Result<Profile> {
    let mut ticks = Vec::with_capacity(dispatches.len());
    for chunk in dispatches.chunks(DISPATCHES_PER_SET) {
        let count = 2 * chunk.len() as u32;
        let query_set = device.create_query_set(&wgpu::QuerySetDescriptor { label: Some("kernel timestamps"), ty: wgpu::QueryType::Timestamp, count });
        let bytes = count as u64 * 8;
        let resolve = device.create_buffer(&wgpu::BufferDescriptor { label: Some("timestamps"), size: bytes, usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC, mapped_at_creation: false });
        let staging = device.create_buffer(&wgpu::BufferDescriptor { label: Some("timestamps readback"), size: bytes, usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST, mapped_at_creation: false });
        let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("profile") });
        for (i, d) in chunk.iter().enumerate() {
            let timestamp_writes = wgpu::ComputePassTimestampWrites { query_set: &query_set, beginning_of_pass_write_index: Some(2 * i as u32), end_of_pass_write_index: Some(2 * i as u32 + 1) };
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some(d.kernel.entry().1), timestamp_writes: Some(timestamp_writes) });
            pass.set_pipeline(pipelines.get(d.kernel));
            pass.set_bind_group(0, &d.bind_group, &[]);
            pass.dispatch_workgroups(d.groups[0], d.groups[1], d.groups[2]);
        }
        encoder.resolve_query_set(&query_set, 0..count, &resolve, 0);
        encoder.copy_buffer_to_buffer(&resolve, 0, &staging, 0, Some(bytes));
        let stamps: Vec<u64> = submit_and_read(device, queue, faults, encoder, &staging, count as usize)?;
        ticks.extend(stamps.chunks(2).map(|pair| pair[1].saturating_sub(pair[0])));
    }
    let ns_per_tick = queue.get_timestamp_period() as f64;
    let mut kernels: Vec<KernelTime> = Vec::new();
    let mut launches = Vec::with_capacity(dispatches.len());
    for (d, &t) in dispatches.iter().zip(&ticks) {
        let name = d.kernel.name();
        let us = t as f64 * ns_per_tick / 1e3;
        launches.push((name.clone(), d.groups, us));
        match kernels.iter_mut().find(|k| k.kernel == name) {
            Some(k) => {
                k.launches += 1;
                k.total_us += us;
            }
            None => kernels.push(KernelTime { kernel: name, launches: 1, total_us: us }),
        }
    }
    kernels.sort_by(|a, b| b.total_us.total_cmp(&a.total_us));
    let total_us = kernels.iter().map(|k| k.total_us).sum();
    Ok(Profile { kernels, launches, total_us })
}
