//! The host's twin of every WGSL struct the engine writes for a kernel: one `#[repr(C)]`
//! [`bytemuck::Pod`] struct per WGSL uniform struct (and reduce.wgsl's `Segment`, the one
//! struct in a storage buffer), with the shader's field names in the shader's order, so
//! a dispatch's parameters are set by name and uploaded as bytes.
//!
//! Each struct's [`Layout`] (field names, offsets, Rust types, size) is what the lab-gpu
//! `shaders` test compares with naga's reflection of the shader, naming any field that
//! differs; [`ALL`] lists them, and that test also fails on a uniform struct missing here.

/// A host struct's place in the shaders and its fields as Rust lays them out.
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    /// The shader file that declares the WGSL struct.
    pub shader: &'static str,
    /// The WGSL struct's name (several shaders call theirs `Dims`).
    pub wgsl_name: &'static str,
    /// The Rust struct's name.
    pub rust_name: &'static str,
    pub size: usize,
    pub fields: &'static [Field],
}

/// One field of a host struct.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    pub name: &'static str,
    pub offset: usize,
    /// The Rust type as written: "u32", "f32", "[[u32; 4]; 2]".
    pub ty: &'static str,
}

/// A host struct with a WGSL twin.
pub trait ShaderStruct: bytemuck::Pod {
    const LAYOUT: Layout;
}

/// Declares a host struct, its WGSL twin's file and name, and its [`Layout`]. Every field
/// is public; `Default` is all zeros.
macro_rules! shader_struct {
    (
        $(#[$meta:meta])*
        $name:ident = $shader:literal $wgsl:ident {
            $($(#[$field_meta:meta])* $field:ident: $ty:ty,)*
        }
    ) => {
        $(#[$meta])*
        #[repr(C)]
        #[derive(Debug, Clone, Copy, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
        pub struct $name {
            $($(#[$field_meta])* pub $field: $ty,)*
        }

        impl ShaderStruct for $name {
            const LAYOUT: Layout = Layout {
                shader: $shader,
                wgsl_name: stringify!($wgsl),
                rust_name: stringify!($name),
                size: std::mem::size_of::<$name>(),
                fields: &[$(Field {
                    name: stringify!($field),
                    offset: std::mem::offset_of!($name, $field),
                    ty: stringify!($ty),
                },)*],
            };
        }
    };
}

shader_struct! {
    /// encoder.wgsl `Dims`: the embedding's forward and its position-table gradient.
    Encoder = "encoder.wgsl" Dims {
        n_rows: u32,
        t_len: u32,
        c: u32,
        ctx: u32,
        wte_off: u32,
        wpe_off: u32,
        dwpe_off: u32,
    }
}

shader_struct! {
    /// layernorm.wgsl `Dims`: one LayerNorm's forward or backward.
    LayerNorm = "layernorm.wgsl" Dims {
        n_rows: u32,
        c: u32,
        inp_off: u32,
        out_off: u32,
        stat_off: u32,
        w_off: u32,
        b_off: u32,
        dout_off: u32,
        dinp_off: u32,
        split_rows: u32,
        /// `backward_params`: where its slabs start in the gradient slab regions.
        part_off: u32,
        /// `backward_dinp`: 1 adds into dinp, 0 overwrites it.
        accumulate: u32,
        /// The split GEMM whose slabs make the input (forward) or dout (backward_dinp);
        /// 0 reads the buffer as it is.
        splits: u32,
        slab_stride: u32,
        gemm_b_off: u32,
        addend_off: u32,
    }
}

shader_struct! {
    /// matmul.wgsl `Gemm`: one strided (batched or split) GEMM and its epilogue.
    Gemm = "matmul.wgsl" Gemm {
        rows: u32,
        cols: u32,
        depth: u32,
        /// [`GemmFlags`] bits.
        flags: u32,
        a_off: u32,
        a_rs: u32,
        a_ks: u32,
        b_off: u32,
        b_ks: u32,
        b_ss: u32,
        c_off: u32,
        c_rs: u32,
        bias_off: u32,
        addend_off: u32,
        k_chunk: u32,
        c_zs: u32,
        z_inner: u32,
        a_zo: u32,
        a_zi: u32,
        b_zo: u32,
        b_zi: u32,
        c_zo: u32,
        c_zi: u32,
        aux_off: u32,
        scale: f32,
    }
}

/// Bits of matmul.wgsl's `Gemm.flags`: how the kernel reads its operands and which
/// epilogues it runs. This is their one definition: the engine appends each to the shaders
/// that use it as a WGSL constant of the same name ([`crate::kernels::source`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GemmFlags(u32);

impl GemmFlags {
    pub const NONE: GemmFlags = GemmFlags(0);
    /// C += bias[bias_off + s].
    pub const BIAS: GemmFlags = GemmFlags(1 << 1);
    /// C += addend[addend_off + r·c_rs + s]: a residual add.
    pub const ADDEND: GemmFlags = GemmFlags(1 << 2);
    /// B's last column is ones: [dW | db] = dyᵀ·[x | 1] in one pass.
    pub const ONES_COLUMN: GemmFlags = GemmFlags(1 << 3);
    /// A is the one-hot matrix of the token ids at a_off: the embedding's gradient.
    pub const ONEHOT_A: GemmFlags = GemmFlags(1 << 4);
    /// Workgroup z is one of a batch of products (attention's per-(b, h) products), not a
    /// split of the depth.
    pub const BATCHED: GemmFlags = GemmFlags(1 << 5);
    /// aux = GELU(C) as well: the fc forward.
    pub const GELU_OUT: GemmFlags = GemmFlags(1 << 6);
    /// C ·= GELU′(aux): the input gradient of fcproj.
    pub const GELU_GRAD: GemmFlags = GemmFlags(1 << 7);
    /// C = causal softmax of scale·C along rows (rows within one tile).
    pub const SOFTMAX: GemmFlags = GemmFlags(1 << 8);
    /// C = the softmax backward of C, the probabilities read through `addend`.
    pub const SOFTMAX_GRAD: GemmFlags = GemmFlags(1 << 9);
    /// A is read as aligned vec4s.
    pub const VEC_A: GemmFlags = GemmFlags(1 << 10);
    /// B is read as aligned vec4s.
    pub const VEC_B: GemmFlags = GemmFlags(1 << 11);

    /// Every flag, by its name in the shaders.
    pub const NAMED: [(&'static str, GemmFlags); 11] = [
        ("BIAS", GemmFlags::BIAS),
        ("ADDEND", GemmFlags::ADDEND),
        ("ONES_COLUMN", GemmFlags::ONES_COLUMN),
        ("ONEHOT_A", GemmFlags::ONEHOT_A),
        ("BATCHED", GemmFlags::BATCHED),
        ("GELU_OUT", GemmFlags::GELU_OUT),
        ("GELU_GRAD", GemmFlags::GELU_GRAD),
        ("SOFTMAX", GemmFlags::SOFTMAX),
        ("SOFTMAX_GRAD", GemmFlags::SOFTMAX_GRAD),
        ("VEC_A", GemmFlags::VEC_A),
        ("VEC_B", GemmFlags::VEC_B),
    ];

    /// The epilogue reduce.wgsl `split_sum` adds to a split GEMM's sum (`SplitSum.flags`).
    pub const SPLIT_SUM: GemmFlags = GemmFlags(GemmFlags::BIAS.0 | GemmFlags::ADDEND.0);

    /// The bits as the uniform holds them.
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// Whether every flag of `other` is set.
    pub const fn contains(self, other: GemmFlags) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::ops::BitOr for GemmFlags {
    type Output = GemmFlags;
    fn bitor(self, other: GemmFlags) -> GemmFlags {
        GemmFlags(self.0 | other.0)
    }
}

impl std::ops::BitOrAssign for GemmFlags {
    fn bitor_assign(&mut self, other: GemmFlags) {
        self.0 |= other.0;
    }
}

impl std::ops::BitAnd for GemmFlags {
    type Output = GemmFlags;
    fn bitand(self, other: GemmFlags) -> GemmFlags {
        GemmFlags(self.0 & other.0)
    }
}

shader_struct! {
    /// attention.wgsl `Dims`: the unfused softmax and its backward.
    Softmax = "attention.wgsl" Dims {
        rows: u32,
        t_len: u32,
        att_off: u32,
        scale: f32,
    }
}

shader_struct! {
    /// logprob.wgsl `Dims`: the LM head's log-probs and their gradient.
    Logprob = "logprob.wgsl" Dims {
        b: u32,
        t_len: u32,
        v: u32,
        _pad: u32,
    }
}

shader_struct! {
    /// reduce.wgsl `Dims`: `seq_sums`.
    SeqSums = "reduce.wgsl" Dims {
        b: u32,
        t_len: u32,
        _pad0: u32,
        _pad1: u32,
    }
}

shader_struct! {
    /// reduce.wgsl `Split`: `split_sum`.
    SplitSum = "reduce.wgsl" Split {
        len: u32,
        splits: u32,
        stride: u32,
        width: u32,
        dst_off: u32,
        dst_rs: u32,
        /// [`GemmFlags::SPLIT_SUM`] bits.
        flags: u32,
        bias_off: u32,
        addend_off: u32,
        _pad0: u32,
        _pad1: u32,
        _pad2: u32,
    }
}

shader_struct! {
    /// reduce.wgsl `Gather`: `gather_grads`.
    Gather = "reduce.wgsl" Gather {
        segments: u32,
        total: u32,
        _pad0: u32,
        _pad1: u32,
    }
}

shader_struct! {
    /// reduce.wgsl `Segment`: one parameter gradient in `gather_grads`' table (a storage
    /// buffer, one after another).
    Segment = "reduce.wgsl" Segment {
        start: u32,
        splits: u32,
        stride: u32,
        width: u32,
        main_cols: u32,
        main_off: u32,
        main_rs: u32,
        side_off: u32,
        side_rs: u32,
        src_off: u32,
        _pad0: u32,
        _pad1: u32,
    }
}

shader_struct! {
    /// loss.wgsl `Loss`: the loss mix and its parameters, written each training step.
    Loss = "loss.wgsl" Loss {
        rows: u32,
        terms: u32,
        seq_off: u32,
        _pad: u32,
        /// The terms' [`LossCode`]s, four to a vec4.
        kinds: [[u32; 4]; 2],
        weights: [[f32; 4]; 2],
        beta: f32,
        eps: f32,
        simpo_gamma: f32,
        discopop_tau: f32,
        exo_shift: f32,
        cpo_alpha: f32,
        kto_desirable_weight: f32,
        kto_undesirable_weight: f32,
    }
}

/// loss.wgsl's codes for the kinds of loss it evaluates (`Loss.kinds`). This is their one
/// definition: the engine appends each to loss.wgsl as a WGSL constant named after the
/// variant in capitals ([`LossCode::wgsl_name`]: `ExoPair` is `EXO_PAIR`).
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LossCode {
    Sigmoid = 0,
    Hinge,
    Ipo,
    ExoPair,
    NcaPair,
    Robust,
    BcoPair,
    SppoHard,
    Aot,
    AotUnpaired,
    ApoZero,
    ApoDown,
    Discopop,
    Sft,
    SigmoidNorm,
    Cdpo,
    Simpo,
    Cpo,
    Orpo,
    Kto,
    PlackettLuce,
}

impl LossCode {
    pub const ALL: [LossCode; 21] = [
        LossCode::Sigmoid,
        LossCode::Hinge,
        LossCode::Ipo,
        LossCode::ExoPair,
        LossCode::NcaPair,
        LossCode::Robust,
        LossCode::BcoPair,
        LossCode::SppoHard,
        LossCode::Aot,
        LossCode::AotUnpaired,
        LossCode::ApoZero,
        LossCode::ApoDown,
        LossCode::Discopop,
        LossCode::Sft,
        LossCode::SigmoidNorm,
        LossCode::Cdpo,
        LossCode::Simpo,
        LossCode::Cpo,
        LossCode::Orpo,
        LossCode::Kto,
        LossCode::PlackettLuce,
    ];

    /// The code as `Loss.kinds` holds it.
    pub const fn bits(self) -> u32 {
        self as u32
    }

    /// The constant's name in loss.wgsl: the variant's words in capitals, joined by `_`.
    pub fn wgsl_name(self) -> String {
        let mut name = String::new();
        for (i, ch) in format!("{self:?}").chars().enumerate() {
            if ch.is_uppercase() && i > 0 {
                name.push('_');
            }
            name.push(ch.to_ascii_uppercase());
        }
        name
    }
}

shader_struct! {
    /// adamw.wgsl `Hyper`: the step-dependent scalars of one AdamW update.
    Hyper = "adamw.wgsl" Hyper {
        n: u32,
        beta1: f32,
        beta2: f32,
        one_minus_beta1: f32,
        one_minus_beta2: f32,
        eps: f32,
        step_size: f32,
        bias_correction2_sqrt: f32,
        decay: f32,
    }
}

/// Every host struct with a WGSL twin.
pub const ALL: [Layout; 11] = [
    Encoder::LAYOUT,
    LayerNorm::LAYOUT,
    Gemm::LAYOUT,
    Softmax::LAYOUT,
    Logprob::LAYOUT,
    SeqSums::LAYOUT,
    SplitSum::LAYOUT,
    Gather::LAYOUT,
    Segment::LAYOUT,
    Loss::LAYOUT,
    Hyper::LAYOUT,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemm_flags_are_distinct_single_bits_with_distinct_names() {
        let mut seen = GemmFlags::NONE;
        for (i, (name, flag)) in GemmFlags::NAMED.iter().enumerate() {
            assert_eq!(flag.bits().count_ones(), 1, "{name}");
            assert!(!seen.contains(*flag), "{name} reuses a bit");
            seen |= *flag;
            assert!(GemmFlags::NAMED[..i].iter().all(|(other, _)| other != name), "{name} twice");
        }
        assert_eq!(seen.bits(), 0b1111_1111_1110);
        assert!(seen.contains(GemmFlags::SPLIT_SUM));
        assert_eq!((GemmFlags::BIAS | GemmFlags::VEC_A) & GemmFlags::SPLIT_SUM, GemmFlags::BIAS);
    }

    #[test]
    fn loss_codes_count_from_zero_with_their_wgsl_names() {
        for (i, code) in LossCode::ALL.iter().enumerate() {
            assert_eq!(code.bits(), i as u32, "{code:?}");
        }
        assert_eq!(LossCode::Sigmoid.wgsl_name(), "SIGMOID");
        assert_eq!(LossCode::AotUnpaired.wgsl_name(), "AOT_UNPAIRED");
        assert_eq!(LossCode::PlackettLuce.wgsl_name(), "PLACKETT_LUCE");
    }
}
