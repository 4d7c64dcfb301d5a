//! Fixed-width runs of values ("lanes") that the compiler turns into vector
//! instructions: the Winograd transforms compute a formula for `L` blocks side
//! by side, each lane holding one block's value.

/// Applies `f` lane by lane to `I` runs of `L` values, giving `O` runs.
#[inline(always)]
pub fn lanewise<const L: usize, const I: usize, const O: usize>(
    inputs: [&[f32; L]; I],
    f: impl Fn([f32; I]) -> [f32; O],
) -> [[f32; L]; O] {
    let mut out = [[0.0f32; L]; O];
    for lane in 0..L {
        let values = f(std::array::from_fn(|i| inputs[i][lane]));
        for (o, value) in values.into_iter().enumerate() {
            out[o][lane] = value;
        }
    }
    out
}

/// `L` values of `row` from `at` on.
#[inline(always)]
pub fn lanes<const L: usize>(row: &[f32], at: usize) -> &[f32; L] {
    row[at..at + L].try_into().expect("L values")
}
