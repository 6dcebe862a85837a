//! The scalar the model is written over: `f32` for the engine, `f64` for the
//! finite-difference tests, so gradient checks can use tight tolerances on the same code
//! that trains.

use std::fmt::Debug;
use std::ops::{Add, AddAssign, Div, Mul, MulAssign, Neg, Sub, SubAssign};

pub trait Float:
    Copy
    + Send
    + Sync
    + Default
    + Debug
    + PartialOrd
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + SubAssign
    + MulAssign
    + 'static
{
    const ZERO: Self;
    const ONE: Self;
    fn from_f64(x: f64) -> Self;
    fn to_f64(self) -> f64;
    fn from_usize(n: usize) -> Self {
        Self::from_f64(n as f64)
    }
    fn sqrt(self) -> Self;
    fn exp(self) -> Self;
    fn ln(self) -> Self;
    fn tanh(self) -> Self;
    /// self · a + b with one rounding (a fused multiply-add: one instruction inside
    /// [`vectorized`] code on FMA hardware, a correctly rounded libm call elsewhere, the
    /// same bits either way).
    fn mul_add(self, a: Self, b: Self) -> Self;
    /// GELU forward over a slice (see `model::gelu_forward`); f32 overrides it with a
    /// form that vectorises.
    fn gelu_forward_slice(out: &mut [Self], inp: &[Self]) {
        crate::model::gelu_forward_generic(out, inp)
    }
    /// GELU backward over a slice (see `model::gelu_backward`).
    fn gelu_backward_slice(dinp: &mut [Self], inp: &[Self], dout: &[Self]) {
        crate::model::gelu_backward_generic(dinp, inp, dout)
    }
    fn max(self, other: Self) -> Self {
        if self > other {
            self
        } else {
            other
        }
    }
}

macro_rules! impl_float {
    ($t:ty, $exp:path, $tanh:path $(, $extra:item)*) => {
        impl Float for $t {
            $($extra)*
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            #[inline(always)]
            fn from_f64(x: f64) -> Self {
                x as $t
            }
            #[inline(always)]
            fn to_f64(self) -> f64 {
                self as f64
            }
            #[inline(always)]
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            #[inline(always)]
            fn exp(self) -> Self {
                $exp(self)
            }
            #[inline(always)]
            fn ln(self) -> Self {
                <$t>::ln(self)
            }
            /// Fused where the CPU has FMA (inside pulp's x86 dispatch). wasm32 has no fused
            /// multiply-add, and `mul_add` there is a slow correctly-rounded libm call, so
            /// the browser engine multiplies and adds: its numbers differ from the native
            /// engine's in the last bits (within the parity tolerance), and stay deterministic.
            #[inline(always)]
            fn mul_add(self, a: Self, b: Self) -> Self {
                #[cfg(target_arch = "wasm32")]
                {
                    self * a + b
                }
                #[cfg(not(target_arch = "wasm32"))]
                {
                    <$t>::mul_add(self, a, b)
                }
            }
            #[inline(always)]
            fn tanh(self) -> Self {
                $tanh(self)
            }
        }
    };
}

// f32 uses branch-free polynomial exp and tanh that vectorise (libm's are opaque calls
// that cost a fifth of a training step); f64, the tests' reference, uses libm.
impl_float!(
    f32,
    exp_f32,
    tanh_f32,
    #[inline]
    fn gelu_forward_slice(out: &mut [f32], inp: &[f32]) {
        gelu_forward_f32(out, inp)
    },
    #[inline]
    fn gelu_backward_slice(dinp: &mut [f32], inp: &[f32], dout: &[f32]) {
        gelu_backward_f32(dinp, inp, dout)
    }
);
impl_float!(f64, f64::exp, f64::tanh);

/// e^x for f32 (Cephes `expf`: range reduction by ln 2 in two parts, degree-5 polynomial,
/// exponent by bit assembly); relative error ≤ 2 ulp on [−87, 88], clamps outside. Written
/// branch-free so loops over it vectorise.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5·2²³: (y + ROUND) − ROUND rounds y to an integer
    let x = x.clamp(-87.0, 88.0);
    let shifted = x * LOG2E + ROUND;
    let n = shifted - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO; // |r| ≤ ln2 / 2
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let er = p * (r * r) + r + 1.0;
    // 2^n from the bits of `shifted` = ROUND + n, whose low mantissa bits hold n + 2²²
    // (integer ops only: a float-to-int `as` cast saturates and blocks vectorisation)
    let scale = f32::from_bits(shifted.to_bits().wrapping_sub(0x4B40_0000 - 127) << 23);
    er * scale
}

/// tanh for f32 (Cephes `tanhf`): odd polynomial below 0.625, 1 − 2/(e^{2|x|} + 1) above;
/// both computed and one selected, so loops vectorise. Error ≤ 3 ulp of the result.
#[inline(always)]
pub fn tanh_f32(x: f32) -> f32 {
    let a = x.abs();
    let z = x * x;
    let small =
        ((((-5.704_988_7e-3 * z + 2.063_909e-2) * z - 5.373_971_6e-2) * z + 1.333_144_2e-1) * z
            - 3.333_328e-1)
            * z
            * x
            + x;
    let large = (1.0 - 2.0 / (exp_f32(2.0 * a) + 1.0)).copysign(x);
    if a < 0.625 {
        small
    } else {
        large
    }
}

const GELU_S: f32 = 0.797_884_6; // √(2/π)
const GELU_K: f32 = 0.044715;

/// GELU (tanh form) written as ½x(1 + tanh u) = x·σ(2u) = x / (1 + e^{−2u}): one exp and
/// one division, no cancellation, branch-free, so the loop vectorises. Element-wise, so
/// the result never depends on how the slice is split across threads.
#[inline(always)]
fn gelu_forward_f32(out: &mut [f32], inp: &[f32]) {
    vectorized(
        #[inline(always)]
        || {
            for (y, &x) in out.iter_mut().zip(inp) {
                let m2u = (-2.0 * GELU_S) * (x + GELU_K * x * x * x);
                *y = x / (1.0 + exp_f32(m2u));
            }
        },
    )
}

/// dinp = dout · gelu'(x) with σ = σ(2u), 1 − σ = e^{−2u}·σ:
/// gelu'(x) = σ + 2x·σ(1 − σ)·√(2/π)(1 + 3·0.044715 x²).
#[inline(always)]
fn gelu_backward_f32(dinp: &mut [f32], inp: &[f32], dout: &[f32]) {
    vectorized(
        #[inline(always)]
        || {
            for ((dx, &x), &dy) in dinp.iter_mut().zip(inp).zip(dout) {
                let x2 = x * x;
                let e = exp_f32((-2.0 * GELU_S) * (x + GELU_K * x2 * x));
                let sig = 1.0 / (1.0 + e);
                let local =
                    sig + (2.0 * GELU_S) * x * (sig * (e * sig)) * (1.0 + 3.0 * GELU_K * x2);
                *dx = local * dy;
            }
        },
    )
}

/// Run `f` compiled for the best SIMD level this CPU offers (AVX2 on x86-64-v3, via pulp's
/// safe runtime dispatch). `f` must be plain loops over slices: the body is inlined into
/// a function with the wider target features, so LLVM vectorises it for them.
#[inline(always)]
pub fn vectorized<R>(f: impl FnOnce() -> R) -> R {
    struct Op<G>(G);
    impl<R, G: FnOnce() -> R> pulp::WithSimd for Op<G> {
        type Output = R;
        #[inline(always)]
        fn with_simd<S: pulp::Simd>(self, _simd: S) -> R {
            (self.0)()
        }
    }
    pulp::Arch::new().dispatch(Op(f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_f32_is_within_2_ulp_of_f64_exp() {
        let mut worst = 0.0f64;
        for i in 0..=200_000 {
            let x = -87.0 + 175.0 * i as f32 / 200_000.0;
            let exact = (x as f64).exp();
            worst = worst.max(((exp_f32(x) as f64) - exact).abs() / exact);
        }
        assert!(worst < 2.4e-7, "max relative error {worst:e}");
        assert_eq!(exp_f32(0.0), 1.0);
    }

    #[test]
    fn tanh_f32_is_within_3_ulp_of_f64_tanh() {
        let mut worst = 0.0f64;
        for i in 0..=200_000 {
            let x = -12.0 + 24.0 * i as f32 / 200_000.0;
            let exact = (x as f64).tanh();
            let ulp = f32::EPSILON as f64 * exact.abs().max(f32::MIN_POSITIVE as f64);
            worst = worst.max(((tanh_f32(x) as f64) - exact).abs() / ulp);
        }
        assert!(worst <= 3.0, "max error {worst} ulp");
        assert_eq!(tanh_f32(0.0), 0.0);
    }
}
