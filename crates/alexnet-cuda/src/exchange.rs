//! Moving blocks of rows between the towers' devices.

use alexnet::Rows;
use cudarc::driver::CudaSlice;

/// Panics unless both blocks of rows have the same shape and lie inside their
/// buffers (a device copy past the end would corrupt other memory).
pub(crate) fn check_rows(
    src: &CudaSlice<f32>,
    src_rows: Rows,
    dst: &CudaSlice<f32>,
    dst_rows: Rows,
    what: &str,
) {
    assert_eq!(
        (src_rows.count, src_rows.len),
        (dst_rows.count, dst_rows.len),
        "rows {what} between blocks of different shapes"
    );
    assert!(
        src_rows.len <= src_rows.stride || src_rows.count <= 1,
        "overlapping source rows"
    );
    assert!(
        dst_rows.len <= dst_rows.stride || dst_rows.count <= 1,
        "overlapping destination rows"
    );
    assert!(
        src_rows.end() <= src.len() && dst_rows.end() <= dst.len(),
        "rows {what} past the end of a buffer"
    );
}
