//! The fast CPU backend's buffer: host `f32` values, plus a bf16 copy made on
//! first use by the small-batch fully connected layers in bf16 mode (inference
//! at batch 1 streams every weight once per image, so halving their bytes
//! halves the time) and dropped by any change to the values.

use std::ops::{Deref, DerefMut};
use std::sync::OnceLock;

use super::fast::gemm_bf16::bf16_bits;

#[derive(Debug, Default)]
pub struct CpuBuffer {
    values: Vec<f32>,
    /// The values rounded to bf16 (nearest even), made on first request.
    bf16: OnceLock<Vec<u16>>,
}

impl CpuBuffer {
    pub fn new(values: Vec<f32>) -> CpuBuffer {
        CpuBuffer {
            values,
            bf16: OnceLock::new(),
        }
    }

    /// The values rounded to bf16, made once and kept until the values change
    /// (every change goes through `deref_mut`, which drops the copy).
    pub fn bf16(&self) -> &[u16] {
        self.bf16
            .get_or_init(|| self.values.iter().map(|&v| bf16_bits(v)).collect())
    }
}

impl From<Vec<f32>> for CpuBuffer {
    fn from(values: Vec<f32>) -> CpuBuffer {
        CpuBuffer::new(values)
    }
}

impl Deref for CpuBuffer {
    type Target = Vec<f32>;
    fn deref(&self) -> &Vec<f32> {
        &self.values
    }
}

impl DerefMut for CpuBuffer {
    fn deref_mut(&mut self) -> &mut Vec<f32> {
        // Whoever borrows the values mutably may change them.
        self.bf16.take();
        &mut self.values
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bf16_copy_follows_every_change() {
        let mut buffer = CpuBuffer::new(vec![1.0, 2.0, 3.0]);
        assert_eq!(
            buffer.bf16(),
            &[bf16_bits(1.0), bf16_bits(2.0), bf16_bits(3.0)]
        );
        buffer[1] = 1.5;
        assert_eq!(buffer.bf16()[1], bf16_bits(1.5));
        buffer.fill(0.25);
        assert!(buffer.bf16().iter().all(|&b| b == bf16_bits(0.25)));
    }
}
