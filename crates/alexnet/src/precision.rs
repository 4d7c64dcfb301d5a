//! How matrix products are computed, on any backend: the [`Precision`] of their
//! operands and sums, and on the CPU the bf16 kernel ([`Bf16Kernel`]) and the
//! batch below which fully connected layers stay f32 ([`Products`]).

/// The arithmetic of the matrix products (convolutions and fully connected
/// layers), on every backend. Everything else (weights, activations, gradients,
/// the SGD update) stays f32.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Precision {
    /// f32 operands and sums. On a GPU, plain fp32 FMA: no tensor cores (cuDNN's
    /// default on Ampere and later would round inputs to TF32).
    #[default]
    F32,
    /// Operands rounded to TF32 (10-bit mantissa) on a GPU's tensor cores, f32
    /// sums. GPUs only: the CPU backend refuses it.
    Tf32,
    /// Mixed precision: both operands of every product rounded to bf16 (8-bit
    /// mantissa, nearest even), summed in f32; the master weights stay f32. How
    /// each backend rounds around its products is documented with the backend.
    Bf16,
}

impl Precision {
    /// The name used by `--precision` and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "fp32",
            Precision::Tf32 => "tf32",
            Precision::Bf16 => "bf16",
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How the matrix products are computed: the precision, and the kernel for bf16.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Products {
    pub precision: Precision,
    pub bf16_kernel: Bf16Kernel,
}

impl Products {
    /// The settings a fully connected layer's matrix products use for a batch of
    /// `n`: below [`BF16_MIN_BATCH`] they stay f32. There the arithmetic is
    /// negligible and each product streams the layer's weights once; rounding the
    /// f32 weights to bf16 on the way would cost more than it saves. (The forward
    /// pass at such batches does not come here: it streams its weights in
    /// `cpu::fast::gemv`, from a bf16 copy kept between calls in bf16 mode.)
    pub fn for_linear_batch(self, n: usize) -> Products {
        if n < BF16_MIN_BATCH {
            Products {
                precision: Precision::F32,
                ..self
            }
        } else {
            self
        }
    }
}

/// The smallest batch at which fully connected layers use bf16 products.
pub const BF16_MIN_BATCH: usize = 8;

impl Default for Products {
    /// f32, with the fastest bf16 kernel of this CPU ready if bf16 is chosen.
    fn default() -> Self {
        Products {
            precision: Precision::F32,
            bf16_kernel: Bf16Kernel::detect(),
        }
    }
}

/// The bf16 micro-kernel implementations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bf16Kernel {
    /// `VDPBF16PS` (x86-64 with AVX512-BF16).
    Avx512Bf16,
    /// Plain f32 arithmetic on the bf16 values; runs anywhere.
    Portable,
}

impl Bf16Kernel {
    /// The fastest kernel this CPU can run.
    pub fn detect() -> Self {
        if Self::Avx512Bf16.is_available() {
            Self::Avx512Bf16
        } else {
            Self::Portable
        }
    }

    pub fn is_available(self) -> bool {
        match self {
            Self::Portable => true,
            Self::Avx512Bf16 => {
                #[cfg(target_arch = "x86_64")]
                {
                    std::arch::is_x86_feature_detected!("avx512f")
                        && std::arch::is_x86_feature_detected!("avx512bw")
                        && std::arch::is_x86_feature_detected!("avx512bf16")
                }
                #[cfg(not(target_arch = "x86_64"))]
                {
                    false
                }
            }
        }
    }

    /// The name used by `--kernels` and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Avx512Bf16 => "avx512-bf16",
            Self::Portable => "portable",
        }
    }
}
