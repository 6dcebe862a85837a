//! Everything one batch shape (B, T) needs on the GPU: the activation buffers, one uniform
//! buffer holding every dispatch's parameters, and the bind groups of the forward and
//! backward dispatch lists. Built once per shape and replayed every step, so a step
//! allocates nothing and only records `dispatch_workgroups` calls.
//!
//! Buffer names and shapes follow lab-cpu's `Activations` (N = B·T, layer-stacked buffers
//! lead with L); the order of dispatches is lab-cpu's `Gpt::forward` / `Gpt::backward`.

use crate::kernels::{Kernel, Pipelines};
use crate::setup::check_buffer_size;
use crate::uniforms::{self, GemmFlags, ShaderStruct};
use lab_core::config::{GptConfig, ParamLayout};
use lab_core::error::{LabError, Result};
use wgpu::util::DeviceExt;

/// Bytes reserved per dispatch in the uniform buffer: more than any uniform struct, and
/// WebGPU's upper bound on `min_uniform_buffer_offset_alignment`.
const UNIFORM_STRIDE: u64 = 256;

// every host struct fits a dispatch's slot
const _: () = {
    let mut i = 0;
    while i < uniforms::ALL.len() {
        assert!(uniforms::ALL[i].size as u64 <= UNIFORM_STRIDE);
        i += 1;
    }
};

/// The engine's buffers a plan's loss dispatch binds: loss.wgsl's uniform (written each
/// training step) and its status word (which adamw.wgsl reads).
pub struct LossBuffers {
    pub uniform: wgpu::Buffer,
    pub status: wgpu::Buffer,
}

/// One kernel launch, ready to replay.
#[derive(Debug)]
pub struct Dispatch {
    pub kernel: Kernel,
    pub bind_group: wgpu::BindGroup,
    pub groups: [u32; 3],
    /// Floating-point operations of a GEMM launch (2 per multiply-add), 0 for the others:
    /// the profile's TFLOP/s.
    pub flops: u64,
}

/// Record `dispatches` into one compute pass.
pub fn record_pass<'a>(
    encoder: &mut wgpu::CommandEncoder,
    pipelines: &Pipelines,
    label: &str,
    dispatches: impl IntoIterator<Item = &'a Dispatch>,
) {
    let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
        label: Some(label),
        timestamp_writes: None,
    });
    let mut current = None;
    for d in dispatches {
        if current != Some(d.kernel) {
            pass.set_pipeline(pipelines.get(d.kernel));
            current = Some(d.kernel);
        }
        pass.set_bind_group(0, &d.bind_group, &[]);
        pass.dispatch_workgroups(d.groups[0], d.groups[1], d.groups[2]);
    }
}

/// A dispatch before its bind group exists: its uniform's bytes and storage buffers.
struct Spec {
    kernel: Kernel,
    uniform: Vec<u8>,
    buffers: Vec<(u32, wgpu::Buffer)>,
    groups: [u32; 3],
    flops: u64,
    backward: bool,
}

/// Workgroup grids that respect `max_compute_workgroups_per_dimension`: a 1-D range of
/// workgroups becomes (x, y) and the kernels rebuild the index as gid.x + gid.y·(nwg.x·wg).
#[derive(Debug, Clone, Copy)]
pub struct Grid {
    pub max_per_dim: u32,
}

impl Grid {
    /// Workgroups to cover `invocations` with `per_group` invocations each (the kernel's
    /// @workgroup_size).
    pub fn cover(&self, invocations: usize, per_group: usize) -> Result<[u32; 3]> {
        let groups = invocations.div_ceil(per_group).max(1);
        let max = self.max_per_dim as usize;
        let x = groups.min(max);
        let y = groups.div_ceil(x);
        if y > max {
            return Err(LabError::Engine { msg: format!("{invocations} invocations exceed the limit max_compute_workgroups_per_dimension = {max} in two dimensions") });
        }
        Ok([x as u32, y as u32, 1])
    }

    /// A 2-D grid for a kernel that uses gid.x and gid.y as they are (matmul.wgsl).
    fn tiles(&self, x: usize, y: usize) -> Result<[u32; 3]> {
        let max = self.max_per_dim as usize;
        if x > max || y > max {
            return Err(LabError::Engine { msg: format!("a {x}×{y} grid of matmul tiles exceeds the limit max_compute_workgroups_per_dimension = {max}") });
        }
        Ok([x as u32, y as u32, 1])
    }
}

/// The GEMM parameters of matmul.wgsl, in its uniform's field order.
#[derive(Debug, Clone, Copy, Default)]
struct Gemm {
    rows: usize,
    cols: usize,
    depth: usize,
    flags: GemmFlags,
    a_off: usize,
    a_rs: usize,
    a_ks: usize,
    b_off: usize,
    b_ks: usize,
    b_ss: usize,
    c_off: usize,
    c_rs: usize,
    bias_off: usize,
    addend_off: usize,
    /// Depth per split (workgroup z); 0 means the whole depth in one split.
    k_chunk: usize,
    /// C's stride between the splits' slabs.
    c_zs: usize,
    /// Batched products (flag BATCHED): batch z = zo·z_inner + zi, operands offset by
    /// zo·(·)_zo + zi·(·)_zi.
    batch: Option<Batch>,
    /// Where GELU's output (GELU_OUT) or input (GELU_GRAD) starts in the `aux` buffer.
    aux_off: usize,
    /// The softmax epilogues' score scale (SOFTMAX, SOFTMAX_GRAD).
    scale: f32,
}

impl Gemm {
    /// Whether the ones column of [dW | db] rides in the last full column tile instead of
    /// a 64-wide tile of its own (matmul.wgsl `folds_ones_column`): when it is column
    /// 64·k.
    fn folds_ones_column(&self) -> bool {
        self.flags.contains(GemmFlags::ONES_COLUMN) && (self.cols - 1).is_multiple_of(64)
    }

    /// matmul.wgsl's VEC_A / VEC_B: which operands can be read four floats at a time.
    /// The kernel reads quads along an operand's unit-stride axis (k when its k stride is
    /// 1, else its rows or columns); a quad is one aligned 16-byte load when every offset
    /// and the other stride are multiples of 4 and so is the extent along that axis (a
    /// quad is then wholly inside the operand or wholly outside). Splits start at
    /// multiples of `k_chunk`.
    fn vector_loads(&self, k_chunk: usize, batch: &Batch) -> GemmFlags {
        let aligned = |values: &[usize]| values.iter().all(|v| v % 4 == 0);
        let along_k = aligned(&[self.depth, k_chunk]);
        let quads = |k_stride: usize, w_stride: usize, width: usize, offsets: &[usize]| {
            aligned(offsets)
                && match (k_stride, w_stride) {
                    (1, other) => along_k && other % 4 == 0,
                    (other, 1) => aligned(&[other, width]),
                    _ => false,
                }
        };
        let mut flags = GemmFlags::NONE;
        if !self.flags.contains(GemmFlags::ONEHOT_A)
            && quads(self.a_ks, self.a_rs, self.rows, &[self.a_off, batch.a.0, batch.a.1])
        {
            flags |= GemmFlags::VEC_A;
        }
        // the ones column is read element by element unless no tile reaches it (folded)
        let ones_column = self.flags.contains(GemmFlags::ONES_COLUMN);
        let ones_in_tiles = ones_column && !self.folds_ones_column();
        let b_width = self.cols - ones_column as usize;
        if !ones_in_tiles
            && quads(self.b_ks, self.b_ss, b_width, &[self.b_off, batch.b.0, batch.b.1])
        {
            flags |= GemmFlags::VEC_B;
        }
        flags
    }
}

/// A depth-split activation GEMM's partial sums, left in the scratch: `splits` slabs
/// `stride` floats apart, each laid out like the output.
#[derive(Debug, Clone, Copy)]
struct Slabs {
    splits: usize,
    stride: usize,
}

/// A residual projection's split GEMM whose sum (with its bias and the residual `addend`
/// it adds onto) the next LayerNorm forward finishes (layernorm.wgsl, `splits` > 0).
#[derive(Debug, Clone, Copy)]
struct ResidualSlabs<'b> {
    slabs: Slabs,
    bias_off: usize,
    addend: (&'b wgpu::Buffer, usize),
}

/// The batch layout of a batched GEMM (attention: zo = b, zi = h).
#[derive(Debug, Clone, Copy, Default)]
struct Batch {
    count: usize,
    inner: usize,
    a: (usize, usize),
    b: (usize, usize),
    c: (usize, usize),
}

/// One parameter gradient for reduce.wgsl `gather_grads`: `splits` slabs of `len` floats,
/// back to back from `src_off`, summed in order; element j (row j / width, column
/// j % width) goes to main_off + row·main_rs + col for col < main_cols, else to
/// side_off + row·side_rs + (col − main_cols).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Segment {
    len: usize,
    splits: usize,
    width: usize,
    main_cols: usize,
    main_off: usize,
    main_rs: usize,
    side_off: usize,
    side_rs: usize,
    src_off: usize,
}

/// Longest sequence whose attention rows fit one GEMM tile, so the softmax and its
/// backward run in the epilogues of QKᵀ and dy·Vᵀ instead of kernels of their own.
const FUSED_SOFTMAX_MAX_T: usize = 64;

/// Workgroups a split GEMM aims for: about two per streaming multiprocessor of a large GPU,
/// and enough to hide latency on a small one.
const SPLIT_TARGET_GROUPS: usize = 256;
/// Most splits of one reduction: `split_sum` and `gather_grads` add them serially per
/// element.
const MAX_SPLITS: usize = 32;
/// Rows per split of a LayerNorm's parameter gradient.
const LN_SPLIT_ROWS: usize = 64;

/// How a weight gradient's depth (the N = B·T rows) is split: (splits, rows per split).
/// The (rows × cols) output of a weight gradient has only a few tiles, so without a split
/// a handful of workgroups would walk all N rows in sequence.
fn split_k(rows: usize, cols: usize, depth: usize) -> (usize, usize) {
    split_depth(rows, cols, depth, 16)
}

/// About [`SPLIT_TARGET_GROUPS`] workgroups for a (rows × cols) output in 64×64 tiles,
/// each split at least `min_chunk` deep (a multiple of the GEMMs' 16-deep step): (splits,
/// depth per split).
fn split_depth(rows: usize, cols: usize, depth: usize, min_chunk: usize) -> (usize, usize) {
    let tiles = rows.div_ceil(64) * cols.div_ceil(64);
    let want = SPLIT_TARGET_GROUPS.div_ceil(tiles).clamp(1, MAX_SPLITS);
    let k_chunk = depth.div_ceil(want).next_multiple_of(16).max(min_chunk);
    (depth.div_ceil(k_chunk), k_chunk)
}

/// The split of an activation GEMM (forward, or a layer's input gradient): none when its
/// output already spreads over enough workgroups or its depth is short; else about two
/// workgroups per SM, at least 64 deep each. (At B·T = 2048 and C = 256, the projections
/// back to C channels have only 128 64×64 tiles and a depth of up to 4C: one wave of
/// workgroups each walking 1024 deep, latency-bound.)
fn split_activation(rows: usize, cols: usize, depth: usize) -> (usize, usize) {
    if rows.div_ceil(64) * cols.div_ceil(64) >= SPLIT_TARGET_GROUPS || depth < 128 {
        return (1, depth);
    }
    split_depth(rows, cols, depth, 64)
}

/// Floats of split-reduction scratch a (B·T = n) plan needs for its depth-split activation
/// GEMMs (one at a time, reduced right away by `split_sum`).
fn partial_floats(cfg: &GptConfig, n: usize) -> usize {
    let (c, v) = (cfg.d_model, cfg.vocab);
    // (cols, depth) of the activation GEMMs (n rows): forward, then input gradients
    let activations =
        [(3 * c, c), (c, c), (4 * c, c), (c, 4 * c), (v, c), (c, 3 * c), (c, v), (4 * c, c)];
    activations
        .iter()
        .map(|&(cols, depth)| {
            let (splits, _) = split_activation(n, cols, depth);
            if splits > 1 {
                splits * n * cols
            } else {
                0
            }
        })
        .max()
        .unwrap_or(0)
}

/// Floats of the parameter gradients' slab regions (reduced together by `gather_grads` at
/// the end of the backward): per layer the four [dW | db] of qkv, attproj, fc, fcproj and
/// two LayerNorms' [dγ | dβ]; the final LayerNorm's; wte's from the LM head and from the
/// embedding.
fn grad_slab_floats(cfg: &GptConfig, n: usize) -> usize {
    let (c, v) = (cfg.d_model, cfg.vocab);
    let slabs = |rows: usize, cols: usize| split_k(rows, cols, n).0 * rows * cols;
    let linear = slabs(3 * c, c + 1) + slabs(c, c + 1) + slabs(4 * c, c + 1) + slabs(c, 4 * c + 1);
    let layer_norm = n.div_ceil(LN_SPLIT_ROWS) * 2 * c;
    cfg.n_layer * (linear + 2 * layer_norm) + layer_norm + 2 * slabs(v, c)
}

/// Records one plan's launches (kernel, uniform, buffers, grid), bound afterwards by
/// [`bind`].
struct Recorder<'a> {
    grid: Grid,
    params: &'a wgpu::Buffer,
    grads: &'a wgpu::Buffer,
    /// Stands in for an unused read-only binding.
    dummy: &'a wgpu::Buffer,
    act: &'a Activations,
    shape: Shape,
    /// Floats of `act.grad_slabs` handed out so far, and what `gather_grads` does with
    /// each region.
    grad_used: usize,
    segments: Vec<Segment>,
    specs: Vec<Spec>,
    /// Whether launches go to the backward's list.
    backward: bool,
}

impl Recorder<'_> {
    /// Record a launch of `kernel` with `uniform` (a struct of the kernel's shader) at
    /// binding 0 and `buffers` at their slots.
    fn push<U: ShaderStruct>(
        &mut self,
        kernel: Kernel,
        uniform: U,
        buffers: &[(u32, &wgpu::Buffer)],
        groups: [u32; 3],
    ) {
        assert_eq!(
            U::LAYOUT.shader,
            kernel.entry().0,
            "{} is not a uniform of {kernel:?}",
            U::LAYOUT.rust_name
        );
        let uniform = bytemuck::bytes_of(&uniform).to_vec();
        let buffers = buffers.iter().map(|(slot, buf)| (*slot, (*buf).clone())).collect();
        self.specs.push(Spec {
            kernel,
            uniform,
            buffers,
            groups,
            flops: 0,
            backward: self.backward,
        });
    }

    #[allow(clippy::too_many_arguments)]
    fn gemm(
        &mut self,
        g: Gemm,
        a: &wgpu::Buffer,
        b: &wgpu::Buffer,
        bias: Option<&wgpu::Buffer>,
        addend: Option<&wgpu::Buffer>,
        c: &wgpu::Buffer,
        aux: Option<&wgpu::Buffer>,
    ) -> Result<()> {
        let k_chunk = if g.k_chunk == 0 { g.depth.max(1) } else { g.k_chunk };
        // a 64×64 output tile per 16×16 workgroup, one workgroup layer per split
        // a ones column that would open a column tile of its own is folded into the last
        // full tile instead (matmul.wgsl: the row sums of A)
        let col_tiles = if g.folds_ones_column() { (g.cols - 1) / 64 } else { g.cols.div_ceil(64) };
        let mut groups = self.grid.tiles(col_tiles, g.rows.div_ceil(64))?;
        let batch = g.batch.unwrap_or(Batch { count: 1, inner: 1, ..Batch::default() });
        let (z, flags) = match g.batch {
            Some(batch) => (batch.count, g.flags | GemmFlags::BATCHED),
            None => (g.depth.div_ceil(k_chunk).max(1), g.flags),
        };
        let flags = flags | g.vector_loads(k_chunk, &batch);
        groups[2] = u32::try_from(z).ok().filter(|&z| z <= self.grid.max_per_dim).ok_or_else(|| LabError::Engine { msg: format!("{z} GEMM batches or splits exceed the limit max_compute_workgroups_per_dimension = {}", self.grid.max_per_dim) })?;
        let uniform = uniforms::Gemm {
            rows: g.rows as u32,
            cols: g.cols as u32,
            depth: g.depth as u32,
            flags: flags.bits(),
            a_off: g.a_off as u32,
            a_rs: g.a_rs as u32,
            a_ks: g.a_ks as u32,
            b_off: g.b_off as u32,
            b_ks: g.b_ks as u32,
            b_ss: g.b_ss as u32,
            c_off: g.c_off as u32,
            c_rs: g.c_rs as u32,
            bias_off: g.bias_off as u32,
            addend_off: g.addend_off as u32,
            k_chunk: k_chunk as u32,
            c_zs: g.c_zs as u32,
            z_inner: batch.inner as u32,
            a_zo: batch.a.0 as u32,
            a_zi: batch.a.1 as u32,
            b_zo: batch.b.0 as u32,
            b_zi: batch.b.1 as u32,
            c_zo: batch.c.0 as u32,
            c_zi: batch.c.1 as u32,
            aux_off: g.aux_off as u32,
            scale: g.scale,
        };
        let act = self.act;
        if c == &act.partial && g.batch.is_none() {
            // the split slabs must fit the scratch partial_floats sized
            let needed = g.c_off + (z - 1) * g.c_zs + (g.rows - 1) * g.c_rs + g.cols;
            if needed * 4 > act.partial.size() as usize {
                return Err(LabError::Engine { msg: format!("internal: a {}×{} GEMM in {z} splits needs {needed} floats of split scratch, {} allocated", g.rows, g.cols, act.partial.size() / 4) });
            }
        }
        let (bias, addend) = (bias.unwrap_or(self.dummy), addend.unwrap_or(self.dummy));
        // the one-hot mode reads the token ids through `a`'s twin binding
        let tokens = if g.flags.contains(GemmFlags::ONEHOT_A) { a } else { self.dummy };
        let aux = aux.unwrap_or(&act.unused_aux);
        self.push(
            Kernel::Gemm,
            uniform,
            &[(1, a), (2, b), (3, bias), (4, addend), (5, c), (6, tokens), (7, aux)],
            groups,
        );
        if let Some(spec) = self.specs.last_mut() {
            spec.flops = 2 * (g.rows * g.cols * g.depth * batch.count) as u64;
        }
        Ok(())
    }

    /// The next `floats` of the gradient slab regions.
    fn grad_region(&mut self, floats: usize) -> Result<usize> {
        let at = self.grad_used;
        self.grad_used += floats;
        if self.grad_used * 4 > self.act.grad_slabs.size() as usize {
            return Err(LabError::Engine { msg: format!("internal: the parameter gradients' split slabs need more than the {} floats allocated", self.act.grad_slabs.size() / 4) });
        }
        Ok(at)
    }

    /// A weight gradient by split-K: `g` (rows, cols, depth; no C offsets) into slabs of its
    /// own region, reduced by `gather_grads`: column < main_cols to main = (offset, row
    /// stride, main_cols) of the gradient buffer, the rest to side_off (the bias). With
    /// `onto_last`, the slabs extend the last region recorded (same shape and destination:
    /// the wte gradient's two halves), so the gather adds them after its own.
    fn weight_gradient(
        &mut self,
        g: Gemm,
        a: &wgpu::Buffer,
        b: &wgpu::Buffer,
        main: (usize, usize, usize),
        side_off: usize,
        onto_last: bool,
    ) -> Result<()> {
        let (splits, k_chunk) = split_k(g.rows, g.cols, g.depth);
        let slab = g.rows * g.cols;
        let at = self.grad_region(splits * slab)?;
        let grad_slabs = &self.act.grad_slabs;
        self.gemm(
            Gemm { c_off: at, c_rs: g.cols, k_chunk, c_zs: slab, ..g },
            a,
            b,
            None,
            None,
            grad_slabs,
            None,
        )?;
        let (main_off, main_rs, main_cols) = main;
        let segment = Segment {
            splits,
            len: slab,
            width: g.cols,
            main_cols,
            main_off,
            main_rs,
            side_off,
            side_rs: 1,
            src_off: at,
        };
        self.add_segment(segment, onto_last)
    }

    fn add_segment(&mut self, segment: Segment, onto_last: bool) -> Result<()> {
        if !onto_last {
            self.segments.push(segment);
            return Ok(());
        }
        match self.segments.last_mut() {
            Some(last) if last.src_off + last.splits * last.len == segment.src_off && Segment { splits: last.splits, src_off: last.src_off, ..segment } == *last => {
                last.splits += segment.splits;
                Ok(())
            }
            _ => Err(LabError::Engine { msg: "internal: a gradient added onto the last one must follow it with the same shape".into() }),
        }
    }

    /// An activation GEMM (`g` with its C offset and epilogue, into `c`), split along its
    /// depth when [`split_activation`] says so: the slabs go to the scratch and
    /// `split_sum` adds them with the bias and addend into `c`. A GEMM with a GELU
    /// epilogue (into or from `aux`) is never split: GELU needs the whole sum.
    #[allow(clippy::too_many_arguments)]
    fn gemm_activation(
        &mut self,
        g: Gemm,
        a: &wgpu::Buffer,
        b: &wgpu::Buffer,
        bias: Option<&wgpu::Buffer>,
        addend: Option<&wgpu::Buffer>,
        c: &wgpu::Buffer,
        aux: Option<&wgpu::Buffer>,
    ) -> Result<()> {
        if let Some(slabs) = self.gemm_activation_slabs(g, a, b, bias, addend, c, aux)? {
            let epilogue = g.flags & GemmFlags::SPLIT_SUM;
            self.split_sum(
                slabs.stride,
                slabs.splits,
                g.cols,
                (c, g.c_off, g.c_rs),
                epilogue,
                bias.map(|p| (p, g.bias_off)),
                addend.map(|x| (x, g.addend_off)),
            )?;
        }
        Ok(())
    }

    /// [`Recorder::gemm_activation`] without its split sum: the whole product into `c`
    /// (None), or, when it splits, its slabs in the scratch, for the caller to add up with
    /// the bias and addend (`split_sum`, or the LayerNorm that reads the output next).
    #[allow(clippy::too_many_arguments)]
    fn gemm_activation_slabs(
        &mut self,
        g: Gemm,
        a: &wgpu::Buffer,
        b: &wgpu::Buffer,
        bias: Option<&wgpu::Buffer>,
        addend: Option<&wgpu::Buffer>,
        c: &wgpu::Buffer,
        aux: Option<&wgpu::Buffer>,
    ) -> Result<Option<Slabs>> {
        let (splits, k_chunk) = split_activation(g.rows, g.cols, g.depth);
        if splits == 1 || aux.is_some() {
            self.gemm(g, a, b, bias, addend, c, aux)?;
            return Ok(None);
        }
        let slab = g.rows * g.cols;
        let partial = &self.act.partial;
        let plain =
            Gemm { flags: GemmFlags::NONE, c_off: 0, c_rs: g.cols, k_chunk, c_zs: slab, ..g };
        self.gemm(plain, a, b, None, None, partial, None)?;
        Ok(Some(Slabs { splits, stride: slab }))
    }

    /// reduce.wgsl `split_sum` over `splits` slabs of `len` floats (rows of `width`) in the
    /// scratch, into `dst` = (buffer, offset, row stride), adding the epilogue of `flags`
    /// (BIAS, ADDEND).
    fn split_sum(
        &mut self,
        len: usize,
        splits: usize,
        width: usize,
        dst: (&wgpu::Buffer, usize, usize),
        flags: GemmFlags,
        bias: Option<(&wgpu::Buffer, usize)>,
        addend: Option<(&wgpu::Buffer, usize)>,
    ) -> Result<()> {
        let (bias_buf, bias_off) = bias.unwrap_or((self.dummy, 0));
        let (addend_buf, addend_off) = addend.unwrap_or((self.dummy, 0));
        let uniform = uniforms::SplitSum {
            len: len as u32,
            splits: splits as u32,
            stride: len as u32,
            width: width as u32,
            dst_off: dst.1 as u32,
            dst_rs: dst.2 as u32,
            flags: flags.bits(),
            bias_off: bias_off as u32,
            addend_off: addend_off as u32,
            ..Default::default()
        };
        let partial = &self.act.partial;
        let groups = self.grid.cover(len, 64)?;
        self.push(
            Kernel::SplitSum,
            uniform,
            &[(4, partial), (5, dst.0), (6, bias_buf), (7, addend_buf)],
            groups,
        );
        Ok(())
    }

    /// out (N, OC) at out_off = inp (N, IC) at inp_off · Wᵀ (+ bias) (+ addend), W (OC, IC)
    /// and bias in the parameters; and GELU(out) into `gelu` (same layout) if given.
    #[allow(clippy::too_many_arguments)]
    fn linear_forward(
        &mut self,
        inp: (&wgpu::Buffer, usize),
        ic: usize,
        oc: usize,
        w_off: usize,
        bias_off: Option<usize>,
        out: (&wgpu::Buffer, usize),
        addend: Option<(&wgpu::Buffer, usize)>,
        gelu: Option<(&wgpu::Buffer, usize)>,
    ) -> Result<()> {
        let g = self.linear(
            inp.1,
            ic,
            oc,
            w_off,
            bias_off,
            out.1,
            addend.map(|a| a.1),
            gelu.map(|x| x.1),
        );
        let params = self.params;
        self.gemm_activation(
            g,
            inp.0,
            params,
            bias_off.map(|_| params),
            addend.map(|a| a.0),
            out.0,
            gelu.map(|x| x.0),
        )
    }

    /// A block's projection back to the residual stream: out (N, C) = addend + inp (N, IC) ·
    /// Wᵀ + bias, as [`Recorder::linear_forward`], except that when the GEMM splits its sum
    /// is left to the LayerNorm that reads `out` next (returned).
    #[allow(clippy::too_many_arguments)]
    fn residual_projection<'b>(
        &mut self,
        inp: (&wgpu::Buffer, usize),
        ic: usize,
        oc: usize,
        w_off: usize,
        bias_off: usize,
        out: (&wgpu::Buffer, usize),
        addend: (&'b wgpu::Buffer, usize),
    ) -> Result<Option<ResidualSlabs<'b>>> {
        let g = self.linear(inp.1, ic, oc, w_off, Some(bias_off), out.1, Some(addend.1), None);
        let params = self.params;
        let slabs = self.gemm_activation_slabs(
            g,
            inp.0,
            params,
            Some(params),
            Some(addend.0),
            out.0,
            None,
        )?;
        Ok(slabs.map(|slabs| ResidualSlabs { slabs, bias_off, addend }))
    }

    /// The GEMM of a linear layer's forward (see [`Recorder::linear_forward`]).
    #[allow(clippy::too_many_arguments)]
    fn linear(
        &self,
        inp_off: usize,
        ic: usize,
        oc: usize,
        w_off: usize,
        bias_off: Option<usize>,
        out_off: usize,
        addend_off: Option<usize>,
        gelu_off: Option<usize>,
    ) -> Gemm {
        let mut flags = GemmFlags::NONE;
        if gelu_off.is_some() {
            flags |= GemmFlags::GELU_OUT;
        }
        if bias_off.is_some() {
            flags |= GemmFlags::BIAS;
        }
        if addend_off.is_some() {
            flags |= GemmFlags::ADDEND;
        }
        Gemm {
            rows: self.shape.n,
            cols: oc,
            depth: ic,
            flags,
            a_off: inp_off,
            a_rs: ic,
            a_ks: 1,
            b_off: w_off,
            b_ks: 1,
            b_ss: ic,
            c_off: out_off,
            c_rs: oc,
            bias_off: bias_off.unwrap_or(0),
            addend_off: addend_off.unwrap_or(0),
            aux_off: gelu_off.unwrap_or(0),
            ..Gemm::default()
        }
    }

    /// dinp (N, IC) = dout · W (overwritten), times GELU′ of `gelu_input` (same layout) if
    /// given (the layer's input was GELU of it); dW (OC, IC) = doutᵀ · inp and dbias = Σ_n dout
    /// (overwritten) in the gradient buffer.
    #[allow(clippy::too_many_arguments)]
    fn linear_backward(
        &mut self,
        dout: &wgpu::Buffer,
        inp: (&wgpu::Buffer, usize),
        ic: usize,
        oc: usize,
        w_off: usize,
        db_off: Option<usize>,
        dinp: &wgpu::Buffer,
        gelu_input: Option<(&wgpu::Buffer, usize)>,
    ) -> Result<()> {
        self.input_gradient(dout, ic, oc, w_off, dinp, gelu_input, false)?;
        self.linear_weight_gradient(dout, inp, ic, oc, w_off, db_off, false)
    }

    /// [`Recorder::linear_backward`] of a layer whose input came from a LayerNorm: when the
    /// input gradient's GEMM splits, its slabs are returned for that LayerNorm's backward
    /// to add up (into `dinp`, at offset 0) instead of a `split_sum` of their own.
    #[allow(clippy::too_many_arguments)]
    fn linear_backward_to_layernorm(
        &mut self,
        dout: &wgpu::Buffer,
        inp: (&wgpu::Buffer, usize),
        ic: usize,
        oc: usize,
        w_off: usize,
        db_off: Option<usize>,
        dinp: &wgpu::Buffer,
    ) -> Result<Option<Slabs>> {
        let slabs = self.input_gradient(dout, ic, oc, w_off, dinp, None, true)?;
        self.linear_weight_gradient(dout, inp, ic, oc, w_off, db_off, false)?;
        Ok(slabs)
    }

    /// dinp = dout · W (× GELU′ of `gelu_input`), the first half of
    /// [`Recorder::linear_backward`]; with `defer`, a split GEMM's slabs are returned
    /// unsummed.
    #[allow(clippy::too_many_arguments)]
    fn input_gradient(
        &mut self,
        dout: &wgpu::Buffer,
        ic: usize,
        oc: usize,
        w_off: usize,
        dinp: &wgpu::Buffer,
        gelu_input: Option<(&wgpu::Buffer, usize)>,
        defer: bool,
    ) -> Result<Option<Slabs>> {
        let flags = if gelu_input.is_some() { GemmFlags::GELU_GRAD } else { GemmFlags::NONE };
        let dx = Gemm {
            rows: self.shape.n,
            cols: ic,
            depth: oc,
            flags,
            a_rs: oc,
            a_ks: 1,
            b_off: w_off,
            b_ks: ic,
            b_ss: 1,
            c_rs: ic,
            aux_off: gelu_input.map_or(0, |x| x.1),
            ..Gemm::default()
        };
        let params = self.params;
        if defer {
            return self.gemm_activation_slabs(
                dx,
                dout,
                params,
                None,
                None,
                dinp,
                gelu_input.map(|x| x.0),
            );
        }
        self.gemm_activation(dx, dout, params, None, None, dinp, gelu_input.map(|x| x.0))?;
        Ok(None)
    }

    /// [dW | db] = doutᵀ · [inp | 1] at dw_off (and db_off), the second half of
    /// [`Recorder::linear_backward`]; `onto_last` as in [`Recorder::weight_gradient`].
    #[allow(clippy::too_many_arguments)]
    fn linear_weight_gradient(
        &mut self,
        dout: &wgpu::Buffer,
        inp: (&wgpu::Buffer, usize),
        ic: usize,
        oc: usize,
        dw_off: usize,
        db_off: Option<usize>,
        onto_last: bool,
    ) -> Result<()> {
        // the bias gradient is the ones column
        let flags = if db_off.is_some() { GemmFlags::ONES_COLUMN } else { GemmFlags::NONE };
        let cols = ic + db_off.is_some() as usize;
        let dw = Gemm {
            rows: oc,
            cols,
            depth: self.shape.n,
            flags,
            a_rs: 1,
            a_ks: oc,
            b_off: inp.1,
            b_ks: ic,
            b_ss: 1,
            ..Gemm::default()
        };
        self.weight_gradient(dw, dout, inp.0, (dw_off, ic, ic), db_off.unwrap_or(0), onto_last)
    }
}

/// The sizes a plan records for: the model's and the batch's (N = B·T rows), and where the
/// parameters lie.
#[derive(Debug, Clone, Copy)]
struct Shape {
    b: usize,
    t: usize,
    n: usize,
    c: usize,
    nh: usize,
    hs: usize,
    v: usize,
    nl: usize,
    ctx: usize,
    /// Floats of one layer's attention probabilities (B, NH, T, T).
    att_len: usize,
    lay: ParamLayout,
}

impl Shape {
    fn new(cfg: &GptConfig, b: usize, t: usize) -> Shape {
        Shape {
            b,
            t,
            n: b * t,
            c: cfg.d_model,
            nh: cfg.n_head,
            hs: cfg.head_dim(),
            v: cfg.vocab,
            nl: cfg.n_layer,
            ctx: cfg.ctx,
            att_len: b * cfg.n_head * t * t,
            lay: cfg.layout(),
        }
    }

    /// Floats of one layer's (B, T, C) activation.
    fn nc(&self) -> usize {
        self.n * self.c
    }

    /// The attention scores' scale, 1/√hs.
    fn scale(&self) -> f32 {
        1.0 / (self.hs as f32).sqrt()
    }

    /// Whether the softmax and its backward run in the epilogues of QKᵀ and dy·Vᵀ.
    fn fused_softmax(&self) -> bool {
        self.t <= FUSED_SOFTMAX_MAX_T
    }
}

/// Where layer l's copy of a layer-stacked parameter starts (the stack leads with L).
fn layer(base: usize, per_layer: usize, l: usize) -> usize {
    base + l * per_layer
}

/// The activation and scratch buffers of one batch shape. Names and shapes follow
/// lab-cpu's `Activations`; layer-stacked buffers lead with L, the backward's scratch
/// holds one layer at a time.
struct Activations {
    /// (B, T) u32
    tokens: wgpu::Buffer,
    /// (B, T)
    mask: wgpu::Buffer,
    /// (B)
    d_seq: wgpu::Buffer,
    /// (B, T, C)
    encoded: wgpu::Buffer,
    /// (L, B, T, C) and its statistics (L, B, T)
    ln1: wgpu::Buffer,
    ln1_mean: wgpu::Buffer,
    ln1_rstd: wgpu::Buffer,
    /// (L, B, T, 3C)
    qkv: wgpu::Buffer,
    /// (L, B, T, C)
    atty: wgpu::Buffer,
    /// (L, B, NH, T, T)
    att: wgpu::Buffer,
    /// (L, B, T, C)
    residual2: wgpu::Buffer,
    ln2: wgpu::Buffer,
    ln2_mean: wgpu::Buffer,
    ln2_rstd: wgpu::Buffer,
    /// (L, B, T, 4C), before and after GELU
    fch: wgpu::Buffer,
    fch_gelu: wgpu::Buffer,
    /// (L, B, T, C)
    residual3: wgpu::Buffer,
    /// (B, T, C) and its statistics (B, T)
    lnf: wgpu::Buffer,
    lnf_mean: wgpu::Buffer,
    lnf_rstd: wgpu::Buffer,
    /// (B, T, V)
    logits: wgpu::Buffer,
    /// (B, T)
    lse: wgpu::Buffer,
    /// (B, T, 2)
    topk: wgpu::Buffer,
    /// [token_logp (B, T) | seq_logp (B) | topk_entropy (B) | topk_mass (B)]
    out: wgpu::Buffer,
    /// (B, T, C)
    dres: wgpu::Buffer,
    dln: wgpu::Buffer,
    datty: wgpu::Buffer,
    /// (B, T, 3C)
    dqkv: wgpu::Buffer,
    /// (B, T, 4C)
    dfch: wgpu::Buffer,
    /// (B, T, V)
    dlogits: wgpu::Buffer,
    /// (B, NH, T, T)
    dpre: wgpu::Buffer,
    /// Split-reduction scratch of the activation GEMMs (see [`partial_floats`]).
    partial: wgpu::Buffer,
    /// The parameter gradients' slab regions, `grad_floats` of them (see
    /// [`grad_slab_floats`]).
    grad_slabs: wgpu::Buffer,
    grad_floats: usize,
    /// Stands in for the GEMM's unused read-write `aux` binding.
    unused_aux: wgpu::Buffer,
    /// [reference (B) | lengths (B) | labels (2B)]
    given: wgpu::Buffer,
}

impl Activations {
    fn new(device: &wgpu::Device, cfg: &GptConfig, s: &Shape) -> Result<Activations> {
        let limits = device.limits();
        let (b, t, n, v, nl, nc) = (s.b, s.t, s.n, s.v, s.nl, s.nc());
        let storage = wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_DST
            | wgpu::BufferUsages::COPY_SRC;
        let make = |name: &str, floats: usize| -> Result<wgpu::Buffer> {
            // a multiple of 16 bytes: matmul.wgsl reads its operands as vec4 arrays
            let bytes = (floats.max(1).next_multiple_of(4) * 4) as u64;
            check_buffer_size(&limits, &format!("activation {name} for a {b}x{t} batch"), bytes)?;
            Ok(device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(name),
                size: bytes,
                usage: storage,
                mapped_at_creation: false,
            }))
        };
        let grad_floats = grad_slab_floats(cfg, n);
        Ok(Activations {
            tokens: make("tokens", n)?,
            mask: make("mask", n)?,
            d_seq: make("d_seq", b)?,
            encoded: make("encoded", nc)?,
            ln1: make("ln1", nl * nc)?,
            ln1_mean: make("ln1_mean", nl * n)?,
            ln1_rstd: make("ln1_rstd", nl * n)?,
            qkv: make("qkv", nl * 3 * nc)?,
            atty: make("atty", nl * nc)?,
            att: make("att", nl * s.att_len)?,
            residual2: make("residual2", nl * nc)?,
            ln2: make("ln2", nl * nc)?,
            ln2_mean: make("ln2_mean", nl * n)?,
            ln2_rstd: make("ln2_rstd", nl * n)?,
            fch: make("fch", nl * 4 * nc)?,
            fch_gelu: make("fch_gelu", nl * 4 * nc)?,
            residual3: make("residual3", nl * nc)?,
            lnf: make("lnf", nc)?,
            lnf_mean: make("lnf_mean", n)?,
            lnf_rstd: make("lnf_rstd", n)?,
            logits: make("logits", n * v)?,
            lse: make("lse", n)?,
            topk: make("topk", 2 * n)?,
            out: make("out", out_floats(b, t))?,
            dres: make("dres", nc)?,
            dln: make("dln", nc)?,
            datty: make("datty", nc)?,
            dqkv: make("dqkv", 3 * nc)?,
            dfch: make("dfch", 4 * nc)?,
            dlogits: make("dlogits", n * v)?,
            dpre: make("dpre", s.att_len)?,
            partial: make("split partials", partial_floats(cfg, n))?,
            grad_slabs: make("gradient split slabs", grad_floats)?,
            grad_floats,
            unused_aux: make("unused aux", 1)?,
            given: make("loss inputs", 4 * b)?,
        })
    }
}

/// Floats in a plan's `out` for a (B, T) batch.
fn out_floats(b: usize, t: usize) -> usize {
    b * t + 3 * b
}

/// The model's layers, in the order of lab-cpu's `Gpt::forward` / `Gpt::backward`.
impl<'a> Recorder<'a> {
    /// The fields every LayerNorm launch of this plan shares.
    fn layer_norm_uniform(
        &self,
        inp_off: usize,
        stat_off: usize,
        w_off: usize,
        b_off: usize,
    ) -> uniforms::LayerNorm {
        uniforms::LayerNorm {
            n_rows: self.shape.n as u32,
            c: self.shape.c as u32,
            inp_off: inp_off as u32,
            stat_off: stat_off as u32,
            w_off: w_off as u32,
            b_off: b_off as u32,
            split_rows: LN_SPLIT_ROWS as u32,
            ..Default::default()
        }
    }

    /// A LayerNorm forward of `inp` into `out` and the statistics (mean, rstd, offset),
    /// first adding up `made`'s slabs into `inp` when the projection that produced it was
    /// split.
    fn layer_norm_forward(
        &mut self,
        inp: (&wgpu::Buffer, usize),
        made: Option<ResidualSlabs>,
        out: (&wgpu::Buffer, usize),
        stats: (&wgpu::Buffer, &wgpu::Buffer, usize),
        w_off: usize,
        b_off: usize,
    ) -> Result<()> {
        let (act, params) = (self.act, self.params);
        let mut uniform = uniforms::LayerNorm {
            out_off: out.1 as u32,
            ..self.layer_norm_uniform(inp.1, stats.2, w_off, b_off)
        };
        let (mut slabs, mut addend) = (self.dummy, self.dummy);
        if let Some(made) = made {
            uniform.splits = made.slabs.splits as u32;
            uniform.slab_stride = made.slabs.stride as u32;
            uniform.gemm_b_off = made.bias_off as u32;
            uniform.addend_off = made.addend.1 as u32;
            (slabs, addend) = (&act.partial, made.addend.0);
        }
        let groups = self.grid.cover(self.shape.n, 1)?;
        self.push(
            Kernel::LayerNormForward,
            uniform,
            &[
                (1, inp.0),
                (2, params),
                (3, out.0),
                (4, stats.0),
                (5, stats.1),
                (11, slabs),
                (12, addend),
            ],
            groups,
        );
        Ok(())
    }

    /// A LayerNorm backward (input `inp`, statistics (mean, rstd, offset), dout in dln),
    /// adding its input gradient into dres (`accumulate` 1) or writing it there (0, the
    /// final LayerNorm), then its parameters' gradient. `made`: dln is first added up
    /// from the slabs of the split GEMM that produced it.
    fn layer_norm_backward(
        &mut self,
        inp: (&wgpu::Buffer, usize),
        made: Option<Slabs>,
        stats: (&wgpu::Buffer, &wgpu::Buffer, usize),
        w_off: usize,
        b_off: usize,
        accumulate: u32,
    ) -> Result<()> {
        let (act, params) = (self.act, self.params);
        let mut uniform = uniforms::LayerNorm {
            accumulate,
            ..self.layer_norm_uniform(inp.1, stats.2, w_off, b_off)
        };
        let mut slabs = self.dummy;
        if let Some(made) = made {
            uniform.splits = made.splits as u32;
            uniform.slab_stride = made.stride as u32;
            slabs = &act.partial;
        }
        let groups = self.grid.cover(self.shape.n, 1)?;
        self.push(
            Kernel::LayerNormBackwardDinp,
            uniform,
            &[
                (1, inp.0),
                (2, params),
                (6, &act.dln),
                (7, stats.0),
                (8, stats.1),
                (9, &act.dres),
                (11, slabs),
            ],
            groups,
        );
        self.layer_norm_params(inp.0, uniform, stats.0, stats.1, w_off, b_off)
    }

    /// A LayerNorm's [dγ | dβ]: per-split sums in a region of their own, which
    /// `gather_grads` reduces, routing dβ to its place.
    fn layer_norm_params(
        &mut self,
        inp: &wgpu::Buffer,
        uniform: uniforms::LayerNorm,
        mean: &wgpu::Buffer,
        rstd: &wgpu::Buffer,
        dw_off: usize,
        db_off: usize,
    ) -> Result<()> {
        let (act, c) = (self.act, self.shape.c);
        let splits = self.shape.n.div_ceil(LN_SPLIT_ROWS);
        let groups = self.grid.tiles(c.div_ceil(64), splits)?;
        let at = self.grad_region(splits * 2 * c)?;
        self.push(
            Kernel::LayerNormBackwardParams,
            uniforms::LayerNorm { part_off: at as u32, ..uniform },
            &[(1, inp), (6, &act.dln), (7, mean), (8, rstd), (10, &act.grad_slabs)],
            groups,
        );
        let segment = Segment {
            len: 2 * c,
            splits,
            width: 2 * c,
            main_cols: c,
            main_off: dw_off,
            main_rs: 0,
            side_off: db_off,
            side_rs: 0,
            src_off: at,
        };
        self.add_segment(segment, false)
    }

    /// Attention's per-(b, h) products as a batch: the strides (per b, per h) of A, B
    /// and C.
    fn heads(&self, a: (usize, usize), b: (usize, usize), c: (usize, usize)) -> Option<Batch> {
        let nh = self.shape.nh;
        Some(Batch { count: self.shape.b * nh, inner: nh, a, b, c })
    }

    /// The strides (per b, per h) of a head's slice of qkv, of a (B, T, C) tensor, of att.
    fn head_strides(&self) -> ((usize, usize), (usize, usize), (usize, usize)) {
        let Shape { t, c, nh, hs, .. } = self.shape;
        ((t * 3 * c, hs), (t * c, hs), (nh * t * t, t * t))
    }

    /// attention.wgsl's softmax (or its backward) over layer l's scores.
    fn softmax(
        &mut self,
        kernel: Kernel,
        l: usize,
        buffers: &[(u32, &wgpu::Buffer)],
    ) -> Result<()> {
        let Shape { b, t, nh, att_len, .. } = self.shape;
        let uniform = uniforms::Softmax {
            rows: (b * nh * t) as u32,
            t_len: t as u32,
            att_off: (l * att_len) as u32,
            scale: self.shape.scale(),
        };
        let groups = self.grid.cover(b * nh * t, 1)?;
        self.push(kernel, uniform, buffers, groups);
        Ok(())
    }

    /// Layer l's attention, per (b, h) as batched GEMMs: att = Q·Kᵀ (raw scores), the
    /// softmax in place, atty = att·V.
    fn attention_forward(&mut self, l: usize) -> Result<()> {
        let act = self.act;
        let Shape { t, c, hs, att_len, .. } = self.shape;
        let nc = self.shape.nc();
        let (qkv_z, btc_z, att_z) = self.head_strides();
        let (q_off, k_off, v_off) = (l * 3 * nc, l * 3 * nc + c, l * 3 * nc + 2 * c);
        let fused = self.shape.fused_softmax();
        let scores = Gemm {
            rows: t,
            cols: t,
            depth: hs,
            flags: if fused { GemmFlags::SOFTMAX } else { GemmFlags::NONE },
            a_off: q_off,
            a_rs: 3 * c,
            a_ks: 1,
            b_off: k_off,
            b_ks: 1,
            b_ss: 3 * c,
            c_off: l * att_len,
            c_rs: t,
            batch: self.heads(qkv_z, qkv_z, att_z),
            scale: self.shape.scale(),
            ..Gemm::default()
        };
        self.gemm(scores, &act.qkv, &act.qkv, None, None, &act.att, None)?;
        if !fused {
            self.softmax(Kernel::SoftmaxForward, l, &[(1, &act.att)])?;
        }
        let y = Gemm {
            rows: t,
            cols: hs,
            depth: t,
            a_off: l * att_len,
            a_rs: t,
            a_ks: 1,
            b_off: v_off,
            b_ks: 3 * c,
            b_ss: 1,
            c_off: l * nc,
            c_rs: c,
            batch: self.heads(att_z, qkv_z, btc_z),
            ..Gemm::default()
        };
        self.gemm(y, &act.att, &act.qkv, None, None, &act.atty, None)
    }

    /// The backward of layer l's attention, from its output's gradient in datty: datt =
    /// dy·Vᵀ into dpre, the softmax backward in place, then dq = dpre·K, dk = dpreᵀ·Q,
    /// dv = attᵀ·dy into dqkv (datty, dpre and dqkv hold one layer).
    fn attention_backward(&mut self, l: usize) -> Result<()> {
        let act = self.act;
        let Shape { t, c, hs, att_len, .. } = self.shape;
        let nc = self.shape.nc();
        let (qkv_z, btc_z, att_z) = self.head_strides();
        let (q_off, k_off, v_off) = (l * 3 * nc, l * 3 * nc + c, l * 3 * nc + 2 * c);
        let fused = self.shape.fused_softmax();
        let datt = Gemm {
            rows: t,
            cols: t,
            depth: hs,
            flags: if fused { GemmFlags::SOFTMAX_GRAD } else { GemmFlags::NONE },
            a_rs: c,
            a_ks: 1,
            b_off: v_off,
            b_ks: 1,
            b_ss: 3 * c,
            c_rs: t,
            addend_off: l * att_len,
            batch: self.heads(btc_z, qkv_z, att_z),
            scale: self.shape.scale(),
            ..Gemm::default()
        };
        self.gemm(datt, &act.datty, &act.qkv, None, Some(&act.att), &act.dpre, None)?;
        if !fused {
            self.softmax(Kernel::SoftmaxBackward, l, &[(2, &act.att), (3, &act.dpre)])?;
        }
        let dq = Gemm {
            rows: t,
            cols: hs,
            depth: t,
            a_rs: t,
            a_ks: 1,
            b_off: k_off,
            b_ks: 3 * c,
            b_ss: 1,
            c_rs: 3 * c,
            batch: self.heads(att_z, qkv_z, qkv_z),
            ..Gemm::default()
        };
        self.gemm(dq, &act.dpre, &act.qkv, None, None, &act.dqkv, None)?;
        let dk = Gemm {
            rows: t,
            cols: hs,
            depth: t,
            a_rs: 1,
            a_ks: t,
            b_off: q_off,
            b_ks: 3 * c,
            b_ss: 1,
            c_off: c,
            c_rs: 3 * c,
            batch: self.heads(att_z, qkv_z, qkv_z),
            ..Gemm::default()
        };
        self.gemm(dk, &act.dpre, &act.qkv, None, None, &act.dqkv, None)?;
        let dv = Gemm {
            rows: t,
            cols: hs,
            depth: t,
            a_off: l * att_len,
            a_rs: 1,
            a_ks: t,
            b_ks: c,
            b_ss: 1,
            c_off: 2 * c,
            c_rs: 3 * c,
            batch: self.heads(att_z, btc_z, qkv_z),
            ..Gemm::default()
        };
        self.gemm(dv, &act.att, &act.datty, None, None, &act.dqkv, None)
    }

    /// Block l's input: the embedding's output for the first block, else the previous
    /// block's residual3.
    fn block_input(&self, l: usize) -> (&'a wgpu::Buffer, usize) {
        let act = self.act;
        if l == 0 {
            (&act.encoded, 0)
        } else {
            (&act.residual3, (l - 1) * self.shape.nc())
        }
    }

    /// The embedding's uniform (its forward and the position table's gradient).
    fn encoder_uniform(&self) -> uniforms::Encoder {
        let Shape { n, t, c, ctx, lay, .. } = self.shape;
        uniforms::Encoder {
            n_rows: n as u32,
            t_len: t as u32,
            c: c as u32,
            ctx: ctx as u32,
            wte_off: lay.wte as u32,
            wpe_off: lay.wpe as u32,
            dwpe_off: lay.wpe as u32,
        }
    }

    /// The LM head's log-prob uniform (forward and backward).
    fn logprob_uniform(&self) -> uniforms::Logprob {
        let Shape { b, t, v, .. } = self.shape;
        uniforms::Logprob { b: b as u32, t_len: t as u32, v: v as u32, _pad: 0 }
    }

    /// The forward: the embedding, the blocks, the final LayerNorm, the tied LM head, its
    /// log-probs and their per-sequence sums.
    fn forward(&mut self) -> Result<()> {
        let (act, params) = (self.act, self.params);
        let Shape { b, n, c, v, nl, lay, .. } = self.shape;
        let nc = self.shape.nc();
        let groups = self.grid.cover(nc, 64)?;
        self.push(
            Kernel::EncoderForward,
            self.encoder_uniform(),
            &[(1, &act.tokens), (2, params), (3, &act.encoded)],
            groups,
        );
        // The projections back to the residual stream (attproj, fcproj) may be split along
        // their depth; then the LayerNorm reading their output adds up the slabs (`made`).
        let mut made = None;
        for l in 0..nl {
            made = self.block_forward(l, made)?;
        }
        let last = (nl - 1) * nc;
        self.layer_norm_forward(
            (&act.residual3, last),
            made,
            (&act.lnf, 0),
            (&act.lnf_mean, &act.lnf_rstd, 0),
            lay.lnfw,
            lay.lnfb,
        )?;
        self.linear_forward((&act.lnf, 0), c, v, lay.wte, None, (&act.logits, 0), None, None)?;
        let groups = self.grid.cover(n, 1)?;
        self.push(
            Kernel::LogprobForward,
            self.logprob_uniform(),
            &[
                (1, &act.logits),
                (2, &act.tokens),
                (3, &act.mask),
                (4, &act.lse),
                (5, &act.out),
                (6, &act.topk),
            ],
            groups,
        );
        self.push(
            Kernel::SeqSums,
            uniforms::SeqSums { b: b as u32, t_len: self.shape.t as u32, ..Default::default() },
            &[(1, &act.mask), (2, &act.topk), (3, &act.out)],
            [b.div_ceil(64) as u32, 1, 1],
        );
        Ok(())
    }

    /// Block l's forward: ln1, qkv, attention, attproj onto the block's input (residual2),
    /// ln2, fc with GELU, fcproj onto residual2 (residual3). `made`: the slabs of the
    /// projection that produced the block's input, when split; returns fcproj's.
    fn block_forward(
        &mut self,
        l: usize,
        made: Option<ResidualSlabs<'a>>,
    ) -> Result<Option<ResidualSlabs<'a>>> {
        let act = self.act;
        let Shape { n, c, lay, .. } = self.shape;
        let nc = self.shape.nc();
        let residual = self.block_input(l);
        self.layer_norm_forward(
            residual,
            made,
            (&act.ln1, l * nc),
            (&act.ln1_mean, &act.ln1_rstd, l * n),
            layer(lay.ln1w, c, l),
            layer(lay.ln1b, c, l),
        )?;
        self.linear_forward(
            (&act.ln1, l * nc),
            c,
            3 * c,
            layer(lay.qkvw, 3 * c * c, l),
            Some(layer(lay.qkvb, 3 * c, l)),
            (&act.qkv, l * 3 * nc),
            None,
            None,
        )?;
        self.attention_forward(l)?;
        // residual2 = residual + attproj(atty): the residual add is the GEMM's epilogue
        let made = self.residual_projection(
            (&act.atty, l * nc),
            c,
            c,
            layer(lay.attprojw, c * c, l),
            layer(lay.attprojb, c, l),
            (&act.residual2, l * nc),
            residual,
        )?;
        self.layer_norm_forward(
            (&act.residual2, l * nc),
            made,
            (&act.ln2, l * nc),
            (&act.ln2_mean, &act.ln2_rstd, l * n),
            layer(lay.ln2w, c, l),
            layer(lay.ln2b, c, l),
        )?;
        // fch = fc(ln2) and fch_gelu = GELU(fch) from one GEMM
        self.linear_forward(
            (&act.ln2, l * nc),
            c,
            4 * c,
            layer(lay.fcw, 4 * c * c, l),
            Some(layer(lay.fcb, 4 * c, l)),
            (&act.fch, l * 4 * nc),
            None,
            Some((&act.fch_gelu, l * 4 * nc)),
        )?;
        self.residual_projection(
            (&act.fch_gelu, l * 4 * nc),
            4 * c,
            c,
            layer(lay.fcprojw, 4 * c * c, l),
            layer(lay.fcprojb, c, l),
            (&act.residual3, l * nc),
            (&act.residual2, l * nc),
        )
    }

    /// The backward, from the sequence log-probs' gradient in d_seq: the LM head, the final
    /// LayerNorm, the blocks in reverse, the embedding, then every parameter gradient's
    /// split sum in one launch.
    fn backward(&mut self, device: &wgpu::Device) -> Result<()> {
        self.backward = true;
        let act = self.act;
        let Shape { n, c, v, nl, lay, .. } = self.shape;
        let groups = self.grid.cover(n * v, 64)?;
        self.push(
            Kernel::LogprobBackward,
            self.logprob_uniform(),
            &[
                (1, &act.logits),
                (2, &act.tokens),
                (3, &act.mask),
                (7, &act.lse),
                (8, &act.d_seq),
                (9, &act.dlogits),
            ],
            groups,
        );
        // dlnf; the LM head's share of dwte (dlogitsᵀ·lnf) is recorded at the end, beside
        // the embedding's
        let made = self.input_gradient(&act.dlogits, c, v, lay.wte, &act.dln, None, true)?;
        self.layer_norm_backward(
            (&act.residual3, (nl - 1) * self.shape.nc()),
            made,
            (&act.lnf_mean, &act.lnf_rstd, 0),
            lay.lnfw,
            lay.lnfb,
            0,
        )?;
        // dres now holds d(residual3[L−1]); each block reads it as its branch outputs'
        // gradient, and its LayerNorms add their input gradients into it.
        for l in (0..nl).rev() {
            self.block_backward(l)?;
        }
        self.embedding_backward()?;
        self.gather_grads(device)
    }

    /// Block l's backward: the MLP's (fcproj with GELU′, fc, ln2), then attention's
    /// (attproj, the heads, qkv, ln1), each LayerNorm adding its input gradient into dres.
    fn block_backward(&mut self, l: usize) -> Result<()> {
        let act = self.act;
        let Shape { n, c, lay, .. } = self.shape;
        let nc = self.shape.nc();
        // dfch = (dres · W_fcproj) ⊙ GELU′(fch) from one GEMM
        self.linear_backward(
            &act.dres,
            (&act.fch_gelu, l * 4 * nc),
            4 * c,
            c,
            layer(lay.fcprojw, 4 * c * c, l),
            Some(layer(lay.fcprojb, c, l)),
            &act.dfch,
            Some((&act.fch, l * 4 * nc)),
        )?;
        let made = self.linear_backward_to_layernorm(
            &act.dfch,
            (&act.ln2, l * nc),
            c,
            4 * c,
            layer(lay.fcw, 4 * c * c, l),
            Some(layer(lay.fcb, 4 * c, l)),
            &act.dln,
        )?;
        self.layer_norm_backward(
            (&act.residual2, l * nc),
            made,
            (&act.ln2_mean, &act.ln2_rstd, l * n),
            layer(lay.ln2w, c, l),
            layer(lay.ln2b, c, l),
            1,
        )?;
        self.linear_backward(
            &act.dres,
            (&act.atty, l * nc),
            c,
            c,
            layer(lay.attprojw, c * c, l),
            Some(layer(lay.attprojb, c, l)),
            &act.datty,
            None,
        )?;
        self.attention_backward(l)?;
        let made = self.linear_backward_to_layernorm(
            &act.dqkv,
            (&act.ln1, l * nc),
            c,
            3 * c,
            layer(lay.qkvw, 3 * c * c, l),
            Some(layer(lay.qkvb, 3 * c, l)),
            &act.dln,
        )?;
        self.layer_norm_backward(
            self.block_input(l),
            made,
            (&act.ln1_mean, &act.ln1_rstd, l * n),
            layer(lay.ln1w, c, l),
            layer(lay.ln1b, c, l),
            1,
        )
    }

    /// dwte = dlogitsᵀ·lnf + one-hot(tokens)ᵀ·dres (split-K GEMMs, the embedding's slabs
    /// right after the LM head's), dwpe = Σ_b dres (written into the gradients).
    fn embedding_backward(&mut self) -> Result<()> {
        let act = self.act;
        let Shape { n, c, v, ctx, lay, .. } = self.shape;
        self.linear_weight_gradient(&act.dlogits, (&act.lnf, 0), c, v, lay.wte, None, false)?;
        let dwte = Gemm {
            rows: v,
            cols: c,
            depth: n,
            flags: GemmFlags::ONEHOT_A,
            b_ks: c,
            b_ss: 1,
            ..Gemm::default()
        };
        self.weight_gradient(dwte, &act.tokens, &act.dres, (lay.wte, c, c), 0, true)?;
        let groups = self.grid.cover(ctx * c, 64)?;
        self.push(
            Kernel::EncoderBackwardWpe,
            self.encoder_uniform(),
            &[(4, &act.dres), (5, self.grads)],
            groups,
        );
        Ok(())
    }

    /// Every parameter gradient's slabs, summed in one launch (reduce.wgsl
    /// `gather_grads`, its table of segments made here).
    fn gather_grads(&mut self, device: &wgpu::Device) -> Result<()> {
        let act = self.act;
        if self.grad_used != act.grad_floats {
            return Err(LabError::Engine {
                msg: format!(
                    "internal: {} floats of gradient slabs allocated, {} used",
                    act.grad_floats, self.grad_used
                ),
            });
        }
        let mut start = 0;
        let mut table = Vec::with_capacity(self.segments.len());
        for s in &self.segments {
            table.push(uniforms::Segment {
                start: start as u32,
                splits: s.splits as u32,
                stride: s.len as u32,
                width: s.width as u32,
                main_cols: s.main_cols as u32,
                main_off: s.main_off as u32,
                main_rs: s.main_rs as u32,
                side_off: s.side_off as u32,
                side_rs: s.side_rs as u32,
                src_off: s.src_off as u32,
                ..Default::default()
            });
            start += s.len;
        }
        let table = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("gradient segments"),
            contents: bytemuck::cast_slice(&table),
            usage: wgpu::BufferUsages::STORAGE,
        });
        let gather = uniforms::Gather {
            segments: self.segments.len() as u32,
            total: start as u32,
            ..Default::default()
        };
        let groups = self.grid.cover(start, 64)?;
        self.push(
            Kernel::GatherGrads,
            gather,
            &[(4, &act.grad_slabs), (5, self.grads), (8, &table)],
            groups,
        );
        Ok(())
    }
}

/// The uniform buffer of `specs` (one [`UNIFORM_STRIDE`] slot each) and their bind groups:
/// (the buffer, the forward's dispatches, the backward's).
fn bind(
    device: &wgpu::Device,
    pipelines: &Pipelines,
    specs: Vec<Spec>,
) -> (wgpu::Buffer, Vec<Dispatch>, Vec<Dispatch>) {
    let mut blob = vec![0u8; specs.len() * UNIFORM_STRIDE as usize];
    for (i, spec) in specs.iter().enumerate() {
        let at = i * UNIFORM_STRIDE as usize;
        blob[at..at + spec.uniform.len()].copy_from_slice(&spec.uniform);
    }
    let uniforms = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some("dispatch uniforms"),
        contents: &blob,
        usage: wgpu::BufferUsages::UNIFORM,
    });
    let (mut forward, mut backward) = (Vec::new(), Vec::new());
    for (i, spec) in specs.into_iter().enumerate() {
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: &uniforms,
                offset: i as u64 * UNIFORM_STRIDE,
                size: wgpu::BufferSize::new(UNIFORM_STRIDE),
            }),
        }];
        entries.extend(spec.buffers.iter().map(|(slot, buf)| wgpu::BindGroupEntry {
            binding: *slot,
            resource: buf.as_entire_binding(),
        }));
        let layout = pipelines.get(spec.kernel).get_bind_group_layout(0);
        let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(spec.kernel.entry().1),
            layout: &layout,
            entries: &entries,
        });
        let dispatch =
            Dispatch { kernel: spec.kernel, bind_group, groups: spec.groups, flops: spec.flops };
        if spec.backward {
            backward.push(dispatch);
        } else {
            forward.push(dispatch);
        }
    }
    (uniforms, forward, backward)
}

/// loss.wgsl's `kernel` into the plan's d_seq: its uniform is the engine's, written each
/// step.
fn loss_dispatch(
    device: &wgpu::Device,
    pipelines: &Pipelines,
    kernel: Kernel,
    loss: &LossBuffers,
    act: &Activations,
) -> Dispatch {
    let layout = pipelines.get(kernel).get_bind_group_layout(0);
    let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some("loss gradient"),
        layout: &layout,
        entries: &[
            wgpu::BindGroupEntry { binding: 0, resource: loss.uniform.as_entire_binding() },
            wgpu::BindGroupEntry { binding: 1, resource: act.out.as_entire_binding() },
            wgpu::BindGroupEntry { binding: 2, resource: act.given.as_entire_binding() },
            wgpu::BindGroupEntry { binding: 3, resource: act.d_seq.as_entire_binding() },
            wgpu::BindGroupEntry { binding: 4, resource: loss.status.as_entire_binding() },
        ],
    });
    // one workgroup of 64 (loss.wgsl)
    Dispatch { kernel, bind_group, groups: [1, 1, 1], flops: 0 }
}

/// Per-shape state: activations, scratch, and the recorded dispatches.
#[derive(Debug)]
pub struct Plan {
    pub batch: usize,
    pub seq_len: usize,
    /// (B, T) u32, written each forward.
    pub tokens: wgpu::Buffer,
    /// (B, T), written each forward.
    pub mask: wgpu::Buffer,
    /// (B), written each backward.
    pub d_seq: wgpu::Buffer,
    /// [token_logp (B, T) | seq_logp (B) | topk_entropy (B) | topk_mass (B)]
    pub out: wgpu::Buffer,
    /// MAP_READ twin of `out`: a forward's one readback.
    pub staging: wgpu::Buffer,
    /// [reference (B) | lengths (B) | labels (2B)], the loss's inputs besides the policy's
    /// log-probs (loss.wgsl `given`), written each training step.
    pub given: wgpu::Buffer,
    /// loss.wgsl's `gradient` and `gradient_batch` into `d_seq`, one of them run between the
    /// forward and the backward of a training step.
    pub loss: Dispatch,
    pub loss_batch: Dispatch,
    /// MAP_READ buffer for a training step's [out | loss status].
    pub step_staging: wgpu::Buffer,
    /// MAP_READ twins of `out` for forwards queued together (an evaluation's chunks of this
    /// shape, each read back after all are submitted), made on first need and kept.
    pub queued_staging: Vec<wgpu::Buffer>,
    /// (B, T, V)
    pub logits: wgpu::Buffer,
    /// (B, T, C) after the final LayerNorm
    pub lnf: wgpu::Buffer,
    pub forward: Vec<Dispatch>,
    pub backward: Vec<Dispatch>,
    /// Keeps the uniforms alive for the bind groups.
    _uniforms: wgpu::Buffer,
}

impl Plan {
    /// Floats in `out`.
    pub fn out_len(&self) -> usize {
        out_floats(self.batch, self.seq_len)
    }

    /// Allocate a (b, t) batch's buffers and record its forward and backward.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        device: &wgpu::Device,
        pipelines: &Pipelines,
        cfg: &GptConfig,
        params: &wgpu::Buffer,
        grads: &wgpu::Buffer,
        dummy: &wgpu::Buffer,
        loss: &LossBuffers,
        b: usize,
        t: usize,
    ) -> Result<Plan> {
        let shape = Shape::new(cfg, b, t);
        let act = Activations::new(device, cfg, &shape)?;
        let mut rec = Recorder {
            grid: Grid { max_per_dim: device.limits().max_compute_workgroups_per_dimension },
            params,
            grads,
            dummy,
            act: &act,
            shape,
            grad_used: 0,
            segments: Vec::new(),
            specs: Vec::new(),
            backward: false,
        };
        rec.forward()?;
        rec.backward(device)?;
        let (uniforms, forward, backward) = bind(device, pipelines, rec.specs);
        let loss_single = loss_dispatch(device, pipelines, Kernel::LossGradient, loss, &act);
        let loss_batch = loss_dispatch(device, pipelines, Kernel::LossGradientBatch, loss, &act);
        let map_read = |label: &str, floats: usize| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: (floats * 4) as u64,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        };
        let out_len = out_floats(b, t);
        Ok(Plan {
            batch: b,
            seq_len: t,
            tokens: act.tokens,
            mask: act.mask,
            d_seq: act.d_seq,
            out: act.out,
            staging: map_read("out staging", out_len),
            given: act.given,
            loss: loss_single,
            loss_batch,
            step_staging: map_read("step staging", out_len + 1),
            queued_staging: Vec::new(),
            logits: act.logits,
            lnf: act.lnf,
            forward,
            backward,
            _uniforms: uniforms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_operands_are_read_four_floats_at_a_time() {
        let one = Batch { count: 1, inner: 1, ..Batch::default() };
        let both = GemmFlags::VEC_A | GemmFlags::VEC_B;
        // medium (C = 256, B·T = 2048): forward x·Wᵀ (both along k), input gradient dy·W
        // (A along k, B along columns), [dW | db] (A along rows, B along columns, the ones
        // column folded), each at a layer's offsets
        let forward = Gemm {
            rows: 2048,
            cols: 768,
            depth: 256,
            a_off: 3 * 2048 * 256,
            a_rs: 256,
            a_ks: 1,
            b_off: 4 * 256 + 7 * 256 * 768,
            b_ks: 1,
            b_ss: 256,
            ..Gemm::default()
        };
        assert_eq!(forward.vector_loads(256, &one), both);
        let dinp = Gemm {
            rows: 2048,
            cols: 256,
            depth: 1024,
            a_rs: 1024,
            a_ks: 1,
            b_off: 4 * 256,
            b_ks: 256,
            b_ss: 1,
            ..Gemm::default()
        };
        assert_eq!(dinp.vector_loads(512, &one), both);
        let dweight = Gemm {
            rows: 768,
            cols: 257,
            depth: 2048,
            flags: GemmFlags::ONES_COLUMN,
            a_rs: 1,
            a_ks: 768,
            b_off: 2048 * 256,
            b_ks: 256,
            b_ss: 1,
            ..Gemm::default()
        };
        assert_eq!(dweight.vector_loads(128, &one), both);
        // attention's per-(b, h) products read q, k, v in place (head size 32)
        let qk = Gemm {
            rows: 64,
            cols: 64,
            depth: 32,
            a_rs: 768,
            a_ks: 1,
            b_off: 256,
            b_ks: 1,
            b_ss: 768,
            ..Gemm::default()
        };
        assert_eq!(
            qk.vector_loads(
                32,
                &Batch {
                    count: 256,
                    inner: 8,
                    a: (64 * 768, 32),
                    b: (64 * 768, 32),
                    c: (8 * 64 * 64, 64 * 64)
                }
            ),
            both
        );
        // element by element where a quad could straddle an edge or an offset is odd
        assert_eq!(
            Gemm { depth: 19, ..qk }.vector_loads(19, &one),
            GemmFlags::NONE,
            "odd depth along k"
        );
        assert_eq!(
            Gemm { a_off: 2, ..forward }.vector_loads(256, &one),
            GemmFlags::VEC_B,
            "A's offset"
        );
        assert_eq!(
            forward.vector_loads(250, &one),
            GemmFlags::NONE,
            "a split not at a multiple of 4"
        );
        assert_eq!(
            Gemm { rows: 48, cols: 49, ..dweight }.vector_loads(64, &one),
            GemmFlags::VEC_A,
            "B's ones column inside a tile"
        );
        assert_eq!(
            Gemm { rows: 50, ..dweight }.vector_loads(64, &one),
            GemmFlags::VEC_B,
            "A's rows not a multiple of 4"
        );
        let dwte = Gemm {
            rows: 96,
            cols: 256,
            depth: 2048,
            flags: GemmFlags::ONEHOT_A,
            b_ks: 256,
            b_ss: 1,
            ..Gemm::default()
        };
        assert_eq!(
            dwte.vector_loads(128, &one),
            GemmFlags::VEC_B,
            "the one-hot A is built, not read"
        );
        let strided = Gemm { a_rs: 8, a_ks: 2, ..forward };
        assert_eq!(strided.vector_loads(256, &one), GemmFlags::VEC_B, "no unit stride in A");
    }

    #[test]
    fn splits_cover_the_depth_and_aim_at_the_target_workgroups() {
        for (rows, cols, depth) in
            [(1024, 257, 2048), (256, 1025, 2048), (96, 256, 2048), (48, 49, 57)]
        {
            let (splits, k_chunk) = split_k(rows, cols, depth);
            assert!(
                splits * k_chunk >= depth && (splits - 1) * k_chunk < depth,
                "{rows}×{cols}×{depth}: {splits} × {k_chunk}"
            );
            assert_eq!(k_chunk % 16, 0);
            assert!(splits <= MAX_SPLITS);
        }
        let (splits, k_chunk) = split_activation(2048, 256, 1024);
        assert_eq!(splits * k_chunk, 1024);
        assert_eq!(
            2048usize.div_ceil(64) * 4 * splits,
            SPLIT_TARGET_GROUPS,
            "fcproj forward at B·T = 2048, C = 256"
        );
    }
}
