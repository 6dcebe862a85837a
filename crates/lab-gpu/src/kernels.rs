//! The WGSL kernels (one op per file in `shaders/`, the single source, embedded at compile
//! time) and their compute pipelines, built once per device.

use crate::uniforms::{GemmFlags, LossCode};
use lab_core::error::Result;
use std::fmt::Write;

/// Every shader file, by name, as embedded in the binary. The naga test compiles the files
/// on disk (through [`source`]); this list is what the engine runs.
pub const SHADERS: [(&str, &str); 8] = [
    ("encoder.wgsl", include_str!("../../../shaders/encoder.wgsl")),
    ("layernorm.wgsl", include_str!("../../../shaders/layernorm.wgsl")),
    ("matmul.wgsl", include_str!("../../../shaders/matmul.wgsl")),
    ("attention.wgsl", include_str!("../../../shaders/attention.wgsl")),
    ("logprob.wgsl", include_str!("../../../shaders/logprob.wgsl")),
    ("reduce.wgsl", include_str!("../../../shaders/reduce.wgsl")),
    ("loss.wgsl", include_str!("../../../shaders/loss.wgsl")),
    ("adamw.wgsl", include_str!("../../../shaders/adamw.wgsl")),
];

/// The constants `file` shares with the host, (name, value): the [`GemmFlags`] it reads
/// (matmul.wgsl all of them, reduce.wgsl `split_sum`'s) and loss.wgsl's [`LossCode`]s.
/// Defined on the host only, they reach the shader through [`source`].
pub fn shared_constants(file: &str) -> Vec<(String, u32)> {
    let flags = match file {
        "matmul.wgsl" => GemmFlags::NAMED.iter().fold(GemmFlags::NONE, |all, &(_, f)| all | f),
        "reduce.wgsl" => GemmFlags::SPLIT_SUM,
        _ => GemmFlags::NONE,
    };
    let mut constants: Vec<(String, u32)> = GemmFlags::NAMED
        .iter()
        .filter(|&&(_, flag)| flags.contains(flag))
        .map(|&(name, flag)| (name.to_string(), flag.bits()))
        .collect();
    if file == "loss.wgsl" {
        constants.extend(LossCode::ALL.map(|code| (code.wgsl_name(), code.bits())));
    }
    constants
}

/// The WGSL the engine compiles for `file` (whose text is `text`): the text, then its
/// [`shared_constants`] as `const` declarations. Appended, not prepended, so that an
/// error's line number is the file's (WGSL's module-scope declarations may follow their
/// uses).
pub fn source(file: &str, text: &str) -> String {
    let mut source = text.to_string();
    let constants = shared_constants(file);
    if !constants.is_empty() {
        source.push_str("\n// Shared with the host (lab-gpu kernels.rs `shared_constants`).\n");
    }
    for (name, value) in constants {
        writeln!(source, "const {name}: u32 = {value}u;").expect("writing to a String");
    }
    source
}

/// One entry point of one shader: the unit a dispatch runs and a timestamp names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kernel {
    EncoderForward,
    EncoderBackwardWpe,
    LayerNormForward,
    LayerNormBackwardDinp,
    LayerNormBackwardParams,
    Gemm,
    SoftmaxForward,
    SoftmaxBackward,
    LogprobForward,
    LogprobBackward,
    SeqSums,
    SplitSum,
    GatherGrads,
    LossGradient,
    LossGradientBatch,
    AdamW,
}

impl Kernel {
    pub const ALL: [Kernel; 16] = [
        Kernel::EncoderForward,
        Kernel::EncoderBackwardWpe,
        Kernel::LayerNormForward,
        Kernel::LayerNormBackwardDinp,
        Kernel::LayerNormBackwardParams,
        Kernel::Gemm,
        Kernel::SoftmaxForward,
        Kernel::SoftmaxBackward,
        Kernel::LogprobForward,
        Kernel::LogprobBackward,
        Kernel::SeqSums,
        Kernel::SplitSum,
        Kernel::GatherGrads,
        Kernel::LossGradient,
        Kernel::LossGradientBatch,
        Kernel::AdamW,
    ];

    /// (shader file, entry point)
    pub fn entry(self) -> (&'static str, &'static str) {
        match self {
            Kernel::EncoderForward => ("encoder.wgsl", "forward"),
            Kernel::EncoderBackwardWpe => ("encoder.wgsl", "backward_wpe"),
            Kernel::LayerNormForward => ("layernorm.wgsl", "forward"),
            Kernel::LayerNormBackwardDinp => ("layernorm.wgsl", "backward_dinp"),
            Kernel::LayerNormBackwardParams => ("layernorm.wgsl", "backward_params"),
            Kernel::Gemm => ("matmul.wgsl", "gemm"),
            Kernel::SoftmaxForward => ("attention.wgsl", "softmax_forward"),
            Kernel::SoftmaxBackward => ("attention.wgsl", "softmax_backward"),
            Kernel::LogprobForward => ("logprob.wgsl", "forward"),
            Kernel::LogprobBackward => ("logprob.wgsl", "backward"),
            Kernel::SeqSums => ("reduce.wgsl", "seq_sums"),
            Kernel::SplitSum => ("reduce.wgsl", "split_sum"),
            Kernel::GatherGrads => ("reduce.wgsl", "gather_grads"),
            Kernel::LossGradient => ("loss.wgsl", "gradient"),
            Kernel::LossGradientBatch => ("loss.wgsl", "gradient_batch"),
            Kernel::AdamW => ("adamw.wgsl", "update"),
        }
    }

    /// "matmul.wgsl:gemm"
    pub fn name(self) -> String {
        let (file, entry) = self.entry();
        format!("{}:{entry}", file.trim_end_matches(".wgsl"))
    }
}

/// The compute pipelines of every kernel on one device.
#[derive(Debug)]
pub struct Pipelines {
    pipelines: Vec<wgpu::ComputePipeline>,
}

impl Pipelines {
    /// Compile every shader and build one pipeline per entry point (layouts derived from the
    /// bindings each entry uses), with wgpu's runtime checks (bounds checks, loop counters:
    /// the browser's way). A WGSL error comes back as an error naming the file.
    pub fn new(device: &wgpu::Device) -> Result<Pipelines> {
        let mut modules = Vec::new();
        for (file, text) in SHADERS {
            let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
            let desc = wgpu::ShaderModuleDescriptor {
                label: Some(file),
                source: wgpu::ShaderSource::Wgsl(source(file, text).into()),
            };
            let module = device.create_shader_module(desc);
            check_scope(scope, file)?;
            modules.push((file, module));
        }
        let mut pipelines = Vec::new();
        for kernel in Kernel::ALL {
            let (file, entry) = kernel.entry();
            let module = &modules
                .iter()
                .find(|(f, _)| *f == file)
                .expect("every kernel's file is in SHADERS")
                .1;
            let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
            let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(entry),
                layout: None,
                module,
                entry_point: Some(entry),
                compilation_options: Default::default(),
                cache: None,
            });
            check_scope(scope, &kernel.name())?;
            pipelines.push(pipeline);
        }
        Ok(Pipelines { pipelines })
    }

    pub fn get(&self, kernel: Kernel) -> &wgpu::ComputePipeline {
        &self.pipelines[Kernel::ALL.iter().position(|&k| k == kernel).expect("kernel in ALL")]
    }
}

#[cfg(not(target_arch = "wasm32"))]
fn check_scope(scope: wgpu::ErrorScopeGuard, what: &str) -> Result<()> {
    match pollster::block_on(scope.pop()) {
        None => Ok(()),
        Some(err) => Err(lab_core::error::LabError::Engine { msg: format!("{what}: {err}") }),
    }
}

/// In the browser, errors surface through the uncaptured-error handler instead.
#[cfg(target_arch = "wasm32")]
fn check_scope(scope: wgpu::ErrorScopeGuard, _what: &str) -> Result<()> {
    drop(scope.pop());
    Ok(())
}
