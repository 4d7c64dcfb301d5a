//! Convolutions through cuDNN's graph (backend) API, the route cuDNN recommends
//! and PyTorch's convolutions take: each pass is an operation graph of one
//! convolution over NHWC tensors (filters `[out, k, k, in / groups]`; cuDNN
//! infers the group count from the input's and the filter's channels), cuDNN's
//! heuristics (modes A and B, then the fallback list: [`HEURISTICS`]) propose
//! engine configurations, and each one the precision policy allows is built
//! into an execution plan and timed on scratch tensors, the fastest kept, as the
//! legacy route times its algorithms.
//!
//! The policy reads each engine's numerical notes (see [`rejection`]). Engines
//! that compile their kernels at run time are passed over: compiling costs
//! seconds per shape, and a plain convolution has precompiled engines.
//!
//! Everything but the timings and executions also runs without a GPU, for a
//! device described by its properties (cuDNN 9.8 and later): the tests plan
//! every pass for an H100 so on the CPU.
//!
//! The operations are built with `beta = 0` (the output is overwritten): bf16
//! mode widens and accumulates the weight gradient in f32 itself.

use std::ffi::c_void;
use std::fmt::Write as _;

use alexnet::layers::ConvGeometry;
use cudarc::cudnn::sys::{
    self, cudnnBackendAttributeName_t as Attr, cudnnBackendAttributeType_t as Kind,
    cudnnBackendBehaviorNote_t as Behavior, cudnnBackendDescriptorType_t as DescKind,
    cudnnBackendNumericalNote_t as Note, cudnnDataType_t,
};
use cudarc::driver::DevicePtrMut;

use super::{
    Dnn, DnnError, Element, Handle, Pass, Policy, Rank, TIMING_WORKSPACE_CAP, Trial, bytes,
    shape_line, workspace_arg,
};

/// The unique ids of a pass's three tensors, the same in every pass: the
/// input (or its gradient), the filter (or its gradient), the output (or its
/// gradient).
const UIDS: [i64; 3] = [1, 2, 3];

/// The most engine configurations timed per pass: the first this many that the
/// policy allows, in the heuristics' order (best first).
const MAX_CANDIDATES: usize = 16;

/// The most engine configurations read from one heuristics query (cuDNN 9
/// proposes a few dozen for a convolution).
const MAX_CONFIGS: usize = 256;

/// Executions timed per candidate, after one untimed.
const TIMED_RUNS: usize = 3;

/// The bytes cuDNN may assume each tensor's address is aligned to (the
/// backend's buffers start on allocation boundaries, at least 256 bytes).
const ALIGNMENT: i64 = 16;

/// One backend descriptor, destroyed when dropped.
struct Desc(sys::cudnnBackendDescriptor_t);

impl Desc {
    fn new(kind: DescKind) -> Result<Desc, DnnError> {
        let mut raw: sys::cudnnBackendDescriptor_t = std::ptr::null_mut();
        // SAFETY: `raw` is a valid out-pointer.
        unsafe { sys::cudnnBackendCreateDescriptor(kind, &mut raw) }
            .result()
            .map_err(|e| DnnError::call(&format!("cudnnBackendCreateDescriptor({kind:?})"), e))?;
        Ok(Desc(raw))
    }

    /// Sets `attr` to `values`, of the C type `kind` names.
    ///
    /// # Safety
    /// `V` must have the size and layout of the C type `kind` stands for.
    unsafe fn set<V>(&self, attr: Attr, kind: Kind, values: &[V]) -> Result<(), DnnError> {
        let count = i64::try_from(values.len()).expect("a short attribute list");
        // SAFETY: a live descriptor, and `count` values of the right C type (the
        // caller's promise); cuDNN copies them.
        unsafe { sys::cudnnBackendSetAttribute(self.0, attr, kind, count, values.as_ptr().cast()) }
            .result()
            .map_err(|e| DnnError::call(&format!("cudnnBackendSetAttribute({attr:?})"), e))
    }

    fn set_i64s(&self, attr: Attr, values: &[i64]) -> Result<(), DnnError> {
        // SAFETY: CUDNN_TYPE_INT64 is int64_t.
        unsafe { self.set(attr, Kind::CUDNN_TYPE_INT64, values) }
    }

    fn set_f32(&self, attr: Attr, value: f32) -> Result<(), DnnError> {
        // SAFETY: CUDNN_TYPE_FLOAT is float.
        unsafe { self.set(attr, Kind::CUDNN_TYPE_FLOAT, &[value]) }
    }

    fn set_data_type(&self, attr: Attr, value: cudnnDataType_t) -> Result<(), DnnError> {
        // SAFETY: CUDNN_TYPE_DATA_TYPE is the cudnnDataType_t enum.
        unsafe { self.set(attr, Kind::CUDNN_TYPE_DATA_TYPE, &[value]) }
    }

    fn set_descs(&self, attr: Attr, values: &[&Desc]) -> Result<(), DnnError> {
        let raw: Vec<sys::cudnnBackendDescriptor_t> = values.iter().map(|d| d.0).collect();
        // SAFETY: CUDNN_TYPE_BACKEND_DESCRIPTOR is cudnnBackendDescriptor_t.
        unsafe { self.set(attr, Kind::CUDNN_TYPE_BACKEND_DESCRIPTOR, &raw) }
    }

    fn set_handle(&self, attr: Attr, handle: &Handle) -> Result<(), DnnError> {
        // SAFETY: CUDNN_TYPE_HANDLE is cudnnHandle_t.
        unsafe { self.set(attr, Kind::CUDNN_TYPE_HANDLE, &[handle.raw]) }
    }

    fn finalize(&self, what: &str) -> Result<(), DnnError> {
        // SAFETY: a live descriptor.
        unsafe { sys::cudnnBackendFinalize(self.0) }
            .result()
            .map_err(|e| DnnError::call(&format!("finalizing the {what}"), e))
    }

    /// Up to `N` values of `attr`, read as `V` (C enums as `i32`).
    ///
    /// # Safety
    /// `V` must have the size of the C type `kind` stands for, and every bit
    /// pattern must be a valid `V`.
    unsafe fn get<V: Copy + Default, const N: usize>(
        &self,
        attr: Attr,
        kind: Kind,
    ) -> Result<Vec<V>, DnnError> {
        let mut values = [V::default(); N];
        let mut count = 0i64;
        // SAFETY: room for `N` values of the right size, and a valid count pointer.
        unsafe {
            sys::cudnnBackendGetAttribute(
                self.0,
                attr,
                kind,
                N as i64,
                &mut count,
                values.as_mut_ptr().cast(),
            )
        }
        .result()
        .map_err(|e| DnnError::call(&format!("cudnnBackendGetAttribute({attr:?})"), e))?;
        let count = usize::try_from(count).unwrap_or(0).min(N);
        Ok(values[..count].to_vec())
    }

    fn get_i64(&self, attr: Attr) -> Result<i64, DnnError> {
        // SAFETY: CUDNN_TYPE_INT64 is int64_t; any bits are an i64.
        let values = unsafe { self.get::<i64, 1>(attr, Kind::CUDNN_TYPE_INT64)? };
        values
            .first()
            .copied()
            .ok_or_else(|| DnnError(format!("cuDNN returned no value for {attr:?}")))
    }
}

impl Drop for Desc {
    fn drop(&mut self) {
        // SAFETY: created in `new` and destroyed only here.
        if let Err(e) = unsafe { sys::cudnnBackendDestroyDescriptor(self.0) }.result() {
            eprintln!("alexnet-cuda: cudnnBackendDestroyDescriptor: {e}");
        }
    }
}

/// The strides of a channels-last tensor of dimensions `[n, c, h, w]` (a filter
/// `[k, c, r, s]` alike).
fn nhwc_strides([_, c, h, w]: [usize; 4]) -> [i64; 4] {
    let [c, h, w] = [c, h, w].map(|v| v as i64);
    [c * h * w, 1, w * c, c]
}

/// A channels-last tensor of `dims` (given in NCHW order) with the unique id `uid`.
fn tensor(uid: i64, data_type: cudnnDataType_t, dims: [usize; 4]) -> Result<Desc, DnnError> {
    let desc = Desc::new(DescKind::CUDNN_BACKEND_TENSOR_DESCRIPTOR)?;
    desc.set_data_type(Attr::CUDNN_ATTR_TENSOR_DATA_TYPE, data_type)?;
    desc.set_i64s(Attr::CUDNN_ATTR_TENSOR_DIMENSIONS, &dims.map(|d| d as i64))?;
    desc.set_i64s(Attr::CUDNN_ATTR_TENSOR_STRIDES, &nhwc_strides(dims))?;
    desc.set_i64s(Attr::CUDNN_ATTR_TENSOR_UNIQUE_ID, &[uid])?;
    desc.set_i64s(Attr::CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, &[ALIGNMENT])?;
    desc.finalize("tensor descriptor")?;
    Ok(desc)
}

/// The convolution's geometry: cross-correlation computed in f32.
fn convolution(g: &ConvGeometry) -> Result<Desc, DnnError> {
    let desc = Desc::new(DescKind::CUDNN_BACKEND_CONVOLUTION_DESCRIPTOR)?;
    let (stride, pad) = (g.stride as i64, g.pad as i64);
    desc.set_data_type(
        Attr::CUDNN_ATTR_CONVOLUTION_COMP_TYPE,
        cudnnDataType_t::CUDNN_DATA_FLOAT,
    )?;
    // SAFETY: CUDNN_TYPE_CONVOLUTION_MODE is the cudnnConvolutionMode_t enum.
    unsafe {
        desc.set(
            Attr::CUDNN_ATTR_CONVOLUTION_CONV_MODE,
            Kind::CUDNN_TYPE_CONVOLUTION_MODE,
            &[sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION],
        )?;
    }
    desc.set_i64s(Attr::CUDNN_ATTR_CONVOLUTION_SPATIAL_DIMS, &[2])?;
    desc.set_i64s(Attr::CUDNN_ATTR_CONVOLUTION_DILATIONS, &[1, 1])?;
    desc.set_i64s(
        Attr::CUDNN_ATTR_CONVOLUTION_FILTER_STRIDES,
        &[stride, stride],
    )?;
    desc.set_i64s(Attr::CUDNN_ATTR_CONVOLUTION_PRE_PADDINGS, &[pad, pad])?;
    desc.set_i64s(Attr::CUDNN_ATTR_CONVOLUTION_POST_PADDINGS, &[pad, pad])?;
    desc.finalize("convolution descriptor")?;
    Ok(desc)
}

/// The operation of `pass` over the tensors `[x, w, y]` (the gradients where the
/// pass writes them): output overwritten.
fn operation(pass: Pass, [x, w, y]: [&Desc; 3], conv: &Desc) -> Result<Desc, DnnError> {
    use Attr::*;
    let (kind, [x_attr, w_attr, y_attr, conv_attr, alpha, beta]) = match pass {
        Pass::Forward => (
            DescKind::CUDNN_BACKEND_OPERATION_CONVOLUTION_FORWARD_DESCRIPTOR,
            [
                CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_X,
                CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_W,
                CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_Y,
                CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_CONV_DESC,
                CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_ALPHA,
                CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_BETA,
            ],
        ),
        Pass::BackwardData => (
            DescKind::CUDNN_BACKEND_OPERATION_CONVOLUTION_BACKWARD_DATA_DESCRIPTOR,
            [
                CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_DX,
                CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_W,
                CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_DY,
                CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_CONV_DESC,
                CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_ALPHA,
                CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_BETA,
            ],
        ),
        Pass::BackwardFilter => (
            DescKind::CUDNN_BACKEND_OPERATION_CONVOLUTION_BACKWARD_FILTER_DESCRIPTOR,
            [
                CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_X,
                CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_DW,
                CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_DY,
                CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_CONV_DESC,
                CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_ALPHA,
                CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_BETA,
            ],
        ),
    };
    let op = Desc::new(kind)?;
    op.set_descs(x_attr, &[x])?;
    op.set_descs(w_attr, &[w])?;
    op.set_descs(y_attr, &[y])?;
    op.set_descs(conv_attr, &[conv])?;
    op.set_f32(alpha, 1.0)?;
    op.set_f32(beta, 0.0)?;
    op.finalize(&format!("{} operation", pass.name()))?;
    Ok(op)
}

/// The device cuDNN's heuristics and execution plans are made for: the GPU
/// behind a handle, or one described by its properties (cuDNN 9.8 and later
/// plan without a GPU then, as the tests on the CPU do).
#[derive(Clone, Copy)]
enum Target<'a> {
    Gpu(&'a Handle),
    #[cfg(test)]
    Described(&'a Desc),
}

/// The engine configurations cuDNN's heuristics of `mode` propose for `graph`
/// on `target`, best first.
fn engine_configs(
    graph: &Desc,
    mode: sys::cudnnBackendHeurMode_t,
    target: Target<'_>,
) -> Result<Vec<Desc>, DnnError> {
    let heuristics = Desc::new(DescKind::CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR)?;
    heuristics.set_descs(Attr::CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, &[graph])?;
    match target {
        // The operation graph carries the handle.
        Target::Gpu(_) => {}
        #[cfg(test)]
        Target::Described(properties) => {
            heuristics.set_descs(Attr::CUDNN_ATTR_ENGINEHEUR_DEVICEPROP, &[properties])?
        }
    }
    // SAFETY: CUDNN_TYPE_HEUR_MODE is the cudnnBackendHeurMode_t enum.
    unsafe {
        heuristics.set(
            Attr::CUDNN_ATTR_ENGINEHEUR_MODE,
            Kind::CUDNN_TYPE_HEUR_MODE,
            &[mode],
        )?;
    }
    heuristics.finalize("engine heuristics")?;
    let mut count = 0i64;
    // SAFETY: asks for the count only (no elements requested, none written).
    unsafe {
        sys::cudnnBackendGetAttribute(
            heuristics.0,
            Attr::CUDNN_ATTR_ENGINEHEUR_RESULTS,
            Kind::CUDNN_TYPE_BACKEND_DESCRIPTOR,
            0,
            &mut count,
            std::ptr::null_mut(),
        )
    }
    .result()
    .map_err(|e| DnnError::call("counting the heuristics' engine configurations", e))?;
    let count = usize::try_from(count).unwrap_or(0).min(MAX_CONFIGS);
    if count == 0 {
        return Ok(Vec::new());
    }
    let configs = (0..count)
        .map(|_| Desc::new(DescKind::CUDNN_BACKEND_ENGINECFG_DESCRIPTOR))
        .collect::<Result<Vec<_>, _>>()?;
    let mut raw: Vec<sys::cudnnBackendDescriptor_t> = configs.iter().map(|c| c.0).collect();
    let mut returned = 0i64;
    // SAFETY: `count` created descriptors for cuDNN to fill.
    unsafe {
        sys::cudnnBackendGetAttribute(
            heuristics.0,
            Attr::CUDNN_ATTR_ENGINEHEUR_RESULTS,
            Kind::CUDNN_TYPE_BACKEND_DESCRIPTOR,
            count as i64,
            &mut returned,
            raw.as_mut_ptr().cast(),
        )
    }
    .result()
    .map_err(|e| DnnError::call("reading the heuristics' engine configurations", e))?;
    let returned = usize::try_from(returned).unwrap_or(0).min(count);
    Ok(configs.into_iter().take(returned).collect())
}

/// What an engine configuration's engine says of itself.
struct Engine {
    /// cuDNN's number for the engine (knob choices aside).
    index: i64,
    /// Its numerical notes (`cudnnBackendNumericalNote_t` values).
    notes: Vec<i32>,
    /// Its behaviour notes (`cudnnBackendBehaviorNote_t` values).
    behaviour: Vec<i32>,
}

impl Engine {
    fn of(config: &Desc) -> Result<Engine, DnnError> {
        let engine = Desc::new(DescKind::CUDNN_BACKEND_ENGINE_DESCRIPTOR)?;
        let mut raw = [engine.0];
        let mut count = 0i64;
        // SAFETY: one created engine descriptor for cuDNN to fill.
        unsafe {
            sys::cudnnBackendGetAttribute(
                config.0,
                Attr::CUDNN_ATTR_ENGINECFG_ENGINE,
                Kind::CUDNN_TYPE_BACKEND_DESCRIPTOR,
                1,
                &mut count,
                raw.as_mut_ptr().cast(),
            )
        }
        .result()
        .map_err(|e| DnnError::call("reading an engine configuration's engine", e))?;
        // SAFETY (both): C enums are int-sized; any i32 is a valid i32. The
        // policy needs the numerical notes; the behaviour notes and the index
        // only inform, so an older cuDNN without them loses nothing.
        let notes = unsafe {
            engine.get::<i32, 16>(
                Attr::CUDNN_ATTR_ENGINE_NUMERICAL_NOTE,
                Kind::CUDNN_TYPE_NUMERICAL_NOTE,
            )?
        };
        let behaviour = unsafe {
            engine.get::<i32, 16>(
                Attr::CUDNN_ATTR_ENGINE_BEHAVIOR_NOTE,
                Kind::CUDNN_TYPE_BEHAVIOR_NOTE,
            )
        };
        Ok(Engine {
            index: engine
                .get_i64(Attr::CUDNN_ATTR_ENGINE_GLOBAL_INDEX)
                .unwrap_or(-1),
            notes,
            behaviour: behaviour.unwrap_or_default(),
        })
    }

    fn has(&self, note: Note) -> bool {
        self.notes.contains(&(note as i32))
    }

    /// "engine 12 (tensor core, nondeterministic)".
    fn name(&self) -> String {
        let named = [
            (Note::CUDNN_NUMERICAL_NOTE_TENSOR_CORE, "tensor core"),
            (
                Note::CUDNN_NUMERICAL_NOTE_DOWN_CONVERT_INPUTS,
                "down-converts",
            ),
            (
                Note::CUDNN_NUMERICAL_NOTE_REDUCED_PRECISION_REDUCTION,
                "reduced-precision sums",
            ),
            (Note::CUDNN_NUMERICAL_NOTE_FFT, "FFT"),
            (
                Note::CUDNN_NUMERICAL_NOTE_NONDETERMINISTIC,
                "nondeterministic",
            ),
            (Note::CUDNN_NUMERICAL_NOTE_WINOGRAD, "Winograd"),
        ];
        let notes: Vec<&str> = named
            .iter()
            .filter(|(n, _)| self.has(*n))
            .map(|(_, s)| *s)
            .collect();
        if notes.is_empty() {
            format!("engine {}", self.index)
        } else {
            format!("engine {} ({})", self.index, notes.join(", "))
        }
    }
}

/// Why the precision policy turns down an engine with these numerical notes for
/// `pass`, or `None` if it may run. The graph API's notes are coarser than the
/// legacy algorithms: fp32's exact policy excludes every Winograd engine, not
/// only the non-fused one.
fn rejection(policy: Policy, pass: Pass, engine: &Engine) -> Option<&'static str> {
    if engine.has(Note::CUDNN_NUMERICAL_NOTE_REDUCED_PRECISION_REDUCTION) {
        return Some("sums in reduced precision");
    }
    let transform = [
        Note::CUDNN_NUMERICAL_NOTE_FFT,
        Note::CUDNN_NUMERICAL_NOTE_WINOGRAD,
        Note::CUDNN_NUMERICAL_NOTE_WINOGRAD_TILE_4x4,
        Note::CUDNN_NUMERICAL_NOTE_WINOGRAD_TILE_6x6,
        Note::CUDNN_NUMERICAL_NOTE_WINOGRAD_TILE_13x13,
    ]
    .iter()
    .any(|&n| engine.has(n));
    match policy {
        Policy::Fp32 | Policy::Fp32Fastest
            if engine.has(Note::CUDNN_NUMERICAL_NOTE_TENSOR_CORE) =>
        {
            Some("fp32 mode runs no tensor-core engine (TF32 rounding)")
        }
        Policy::Fp32 if transform => {
            Some("fp32 mode excludes FFT and Winograd engines (their transforms round beyond fp32)")
        }
        Policy::Bf16Values if transform => {
            Some("transforms the operands before its products (no longer bf16 values)")
        }
        Policy::Fp32 | Policy::Fp32Fastest | Policy::Tf32 | Policy::Bf16Values
            if engine.has(Note::CUDNN_NUMERICAL_NOTE_DOWN_CONVERT_INPUTS) =>
        {
            Some("would round the f32 operands to a 16-bit type")
        }
        Policy::Bf16
            if pass != Pass::Forward && engine.has(Note::CUDNN_NUMERICAL_NOTE_NONDETERMINISTIC) =>
        {
            Some("non-deterministic (unordered sums, which may round partial sums to bf16)")
        }
        _ => None,
    }
}

/// An engine configuration's engine, if the policy lets `pass` run on it and
/// it needs no compiling at run time; else why not.
fn admit(policy: Policy, pass: Pass, config: &Desc) -> Result<Engine, String> {
    let engine = Engine::of(config).map_err(|e| e.to_string())?;
    if let Some(why) = rejection(policy, pass, &engine) {
        return Err(format!("{}: {why}", engine.name()));
    }
    if engine
        .behaviour
        .contains(&(Behavior::CUDNN_BEHAVIOR_NOTE_RUNTIME_COMPILATION as i32))
    {
        return Err(format!(
            "{}: compiles its kernels at run time",
            engine.name()
        ));
    }
    Ok(engine)
}

/// The execution plan of an engine configuration (`name` says which, in
/// errors) on `target`, and the bytes of workspace it needs; why not where it
/// cannot be built or needs more workspace than the timings may allocate.
fn execution_plan(name: &str, config: &Desc, target: Target<'_>) -> Result<(Desc, usize), String> {
    let plan = Desc::new(DescKind::CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR)
        .and_then(|plan| {
            match target {
                Target::Gpu(handle) => {
                    plan.set_handle(Attr::CUDNN_ATTR_EXECUTION_PLAN_HANDLE, handle)?
                }
                #[cfg(test)]
                Target::Described(properties) => {
                    plan.set_descs(Attr::CUDNN_ATTR_EXECUTION_PLAN_DEVICEPROP, &[properties])?
                }
            }
            plan.set_descs(Attr::CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, &[config])?;
            plan.finalize("execution plan")?;
            Ok(plan)
        })
        .map_err(|e| format!("{name}: {e}"))?;
    let workspace = plan
        .get_i64(Attr::CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE)
        .map_err(|e| format!("{name}: {e}"))?;
    let workspace = usize::try_from(workspace)
        .map_err(|_| format!("{name}: a workspace of {workspace} bytes"))?;
    if workspace > TIMING_WORKSPACE_CAP {
        return Err(format!(
            "{name}: needs {} of workspace, more than the timings' {}",
            bytes(workspace),
            bytes(TIMING_WORKSPACE_CAP)
        ));
    }
    Ok((plan, workspace))
}

/// The heuristics asked, in turn, for engine configurations: mode A (quick),
/// then mode B (slower, and alone in proposing tensor-core engines for some
/// shapes: the weight gradients of the paper's conv4 and conv5 on an H100,
/// where mode A proposes none), then the fallback list.
const HEURISTICS: [sys::cudnnBackendHeurMode_t; 3] = [
    sys::cudnnBackendHeurMode_t::CUDNN_HEUR_MODE_A,
    sys::cudnnBackendHeurMode_t::CUDNN_HEUR_MODE_B,
    sys::cudnnBackendHeurMode_t::CUDNN_HEUR_MODE_FALLBACK,
];

/// The first [`MAX_CANDIDATES`] engine configurations that `policy` admits
/// for `pass` among those the [`HEURISTICS`] propose for `graph` on `target`
/// (in their order: a list is asked only while fewer were admitted), each with
/// its engine; why every other one read was passed over goes to `turned_down`.
/// The lists overlap, so a configuration may come twice.
fn admitted(
    policy: Policy,
    pass: Pass,
    graph: &Desc,
    target: Target<'_>,
    turned_down: &mut Vec<String>,
) -> Vec<(Engine, Desc)> {
    let mut admitted = Vec::new();
    for mode in HEURISTICS {
        if admitted.len() == MAX_CANDIDATES {
            break;
        }
        let configs = match engine_configs(graph, mode, target) {
            Ok(configs) => configs,
            Err(e) => {
                turned_down.push(format!("heuristics {mode:?}: {e}"));
                continue;
            }
        };
        for config in configs {
            match admit(policy, pass, &config) {
                Ok(_) if admitted.len() == MAX_CANDIDATES => break,
                Ok(engine) => admitted.push((engine, config)),
                Err(why) => turned_down.push(why),
            }
        }
    }
    admitted
}

/// One pass's operation graph (a single convolution) and the descriptors it
/// is made of, the graph first so that it is dropped first.
struct PassGraph {
    graph: Desc,
    _operation: Desc,
    _convolution: Desc,
    _tensors: [Desc; 3],
}

impl PassGraph {
    /// The graph of `pass` over `n` images of `g`, tensors of `data_type`.
    /// `handle` may be left out where cuDNN allows it (9.8 and later), as the
    /// descriptor test does without a GPU.
    fn new(
        pass: Pass,
        g: &ConvGeometry,
        n: usize,
        data_type: cudnnDataType_t,
        handle: Option<&Handle>,
    ) -> Result<PassGraph, DnnError> {
        let x = tensor(
            UIDS[0],
            data_type,
            [n, g.input.channels, g.input.height, g.input.width],
        )?;
        let w = tensor(
            UIDS[1],
            data_type,
            [g.output.channels, g.in_per_group(), g.kernel, g.kernel],
        )?;
        let y = tensor(
            UIDS[2],
            data_type,
            [n, g.output.channels, g.output.height, g.output.width],
        )?;
        let conv = convolution(g)?;
        let op = operation(pass, [&x, &w, &y], &conv)?;
        let graph = Desc::new(DescKind::CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR)?;
        if let Some(handle) = handle {
            graph.set_handle(Attr::CUDNN_ATTR_OPERATIONGRAPH_HANDLE, handle)?;
        }
        graph.set_descs(Attr::CUDNN_ATTR_OPERATIONGRAPH_OPS, &[&op])?;
        graph.finalize(&format!("{} operation graph", pass.name()))?;
        Ok(PassGraph {
            graph,
            _operation: op,
            _convolution: conv,
            _tensors: [x, w, y],
        })
    }
}

/// A candidate built and timed: its plan, the configuration it was made from,
/// its workspace in bytes and its milliseconds per execution.
struct Timed {
    plan: Desc,
    config: Desc,
    workspace: usize,
    time: f32,
}

/// One pass's execution plan and what it was built from.
struct GraphPass {
    /// Dropped first: the execution plan, then the configuration and graph it
    /// was made from.
    plan: Desc,
    _made_from: Option<(Desc, PassGraph)>,
    /// Bytes of workspace the plan needs.
    workspace: usize,
    /// Milliseconds per execution, measured.
    time: f32,
    /// Set where the engine breaks the policy's promise (bf16's backward
    /// passes when no deterministic engine runs).
    warning: Option<String>,
}

impl GraphPass {
    /// Runs the pass on the tensors at `[x, w, y]` (device addresses, in the
    /// order of [`UIDS`]) with `workspace` (at least [`GraphPass::workspace`]
    /// bytes, or null when that is 0).
    ///
    /// # Safety
    /// The addresses must hold tensors of the plan's shape and element type.
    unsafe fn execute(
        &self,
        handle: &Handle,
        tensors: [u64; 3],
        workspace: *mut c_void,
    ) -> Result<(), DnnError> {
        let pack = variant_pack(tensors, workspace)?;
        // SAFETY: the caller's promise.
        unsafe { self.run(handle, &pack) }
    }

    /// Runs the plan on the tensors and workspace of `pack`.
    ///
    /// # Safety
    /// As for [`GraphPass::execute`], for the pack's addresses.
    unsafe fn run(&self, handle: &Handle, pack: &Desc) -> Result<(), DnnError> {
        // SAFETY: a live handle, a finalized plan, and tensors and workspace as
        // the caller promises.
        unsafe { sys::cudnnBackendExecute(handle.raw, self.plan.0, pack.0) }
            .result()
            .map_err(|e| DnnError::call("cudnnBackendExecute", e))
    }
}

/// The addresses of a pass's tensors `[x, w, y]` (in the order of [`UIDS`])
/// and its workspace, as cuDNN takes them.
fn variant_pack(tensors: [u64; 3], workspace: *mut c_void) -> Result<Desc, DnnError> {
    let pack = Desc::new(DescKind::CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR)?;
    let pointers = tensors.map(|t| t as *mut c_void);
    pack.set_i64s(Attr::CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, &UIDS)?;
    // SAFETY: CUDNN_TYPE_VOID_PTR is void*.
    unsafe {
        pack.set(
            Attr::CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS,
            Kind::CUDNN_TYPE_VOID_PTR,
            &pointers,
        )?;
        pack.set(
            Attr::CUDNN_ATTR_VARIANT_PACK_WORKSPACE,
            Kind::CUDNN_TYPE_VOID_PTR,
            &[workspace],
        )?;
    }
    pack.finalize("variant pack")?;
    Ok(pack)
}

/// A convolution shape's three passes through the graph API.
pub(super) struct GraphPlan {
    forward: GraphPass,
    backward_data: GraphPass,
    backward_filter: GraphPass,
    /// Bytes of workspace the largest of the three needs.
    pub(super) workspace: usize,
}

impl GraphPlan {
    fn pass(&self, pass: Pass) -> &GraphPass {
        match pass {
            Pass::Forward => &self.forward,
            Pass::BackwardData => &self.backward_data,
            Pass::BackwardFilter => &self.backward_filter,
        }
    }

    /// Runs `pass` on the tensors at `[x, w, y]` (device addresses; the one the
    /// pass writes is overwritten) with `workspace`.
    ///
    /// # Safety
    /// The addresses must hold tensors of the plan's shape and element type,
    /// and `workspace` at least [`GraphPlan::workspace`] bytes (null if 0).
    pub(super) unsafe fn execute(
        &self,
        pass: Pass,
        handle: &Handle,
        tensors: [u64; 3],
        workspace: *mut c_void,
    ) -> Result<(), DnnError> {
        // SAFETY: the caller's promise.
        unsafe { self.pass(pass).execute(handle, tensors, workspace) }
    }

    fn passes(&self) -> [&GraphPass; 3] {
        [&self.forward, &self.backward_data, &self.backward_filter]
    }

    /// Every pass is timed; the plan keeps the policy unless a pass had to
    /// take an engine that breaks it.
    pub(super) fn rank(&self) -> Rank {
        Rank {
            keeps_policy: self.passes().iter().all(|p| p.warning.is_none()),
            time: Some(self.passes().iter().map(|p| p.time).sum()),
        }
    }

    /// Where a pass breaks the policy's promise.
    pub(super) fn warnings(&self) -> impl Iterator<Item = &String> {
        self.passes().into_iter().filter_map(|p| p.warning.as_ref())
    }
}

impl<T: Element> Dnn<T> {
    /// The plan of one shape through the graph API: each pass's engines timed.
    /// bf16 only: its operations overwrite their outputs, and fp32 accumulates
    /// weight gradients in cuDNN (`beta = 1`).
    pub(super) fn build_graph(&self, g: &ConvGeometry, n: usize) -> Result<GraphPlan, DnnError> {
        if self.policy != Policy::Bf16 {
            return Err(DnnError(
                "the graph API route serves bf16 convolutions only".into(),
            ));
        }
        let mut log = String::new();
        if self.log {
            let _ = writeln!(
                log,
                "alexnet-cuda: cuDNN graph plan: {}, NHWC; policy {}",
                shape_line(g, n),
                self.policy.describe(),
            );
        }
        // Scratch tensors for the timings; workspace is added as candidates ask.
        let (mut trial, _) = self.scratch(g, n, 0)?;
        let result = (|| {
            let forward = self.graph_pass(Pass::Forward, g, n, &mut trial, &mut log)?;
            let backward_data = self.graph_pass(Pass::BackwardData, g, n, &mut trial, &mut log)?;
            let backward_filter =
                self.graph_pass(Pass::BackwardFilter, g, n, &mut trial, &mut log)?;
            let workspace = forward
                .workspace
                .max(backward_data.workspace)
                .max(backward_filter.workspace);
            Ok(GraphPlan {
                forward,
                backward_data,
                backward_filter,
                workspace,
            })
        })();
        if self.log {
            eprint!("{log}");
        }
        result
    }

    /// One pass's graph, its engines from the heuristics ([`admitted`]), each
    /// timed, the fastest kept.
    fn graph_pass(
        &self,
        pass: Pass,
        g: &ConvGeometry,
        n: usize,
        trial: &mut Trial<T>,
        log: &mut String,
    ) -> Result<GraphPass, DnnError> {
        let graph = PassGraph::new(pass, g, n, T::DATA_TYPE, Some(&self.handle))?;
        let (mut best, mut turned_down) = self.search(self.policy, pass, &graph.graph, trial, log);
        let mut warning = None;
        if best.is_none() && self.policy == Policy::Bf16 && pass != Pass::Forward {
            // As on the legacy route: bf16 asks for deterministic backward
            // passes for precision's sake only, so rather than stop, run one
            // that is not, and say so.
            let (relaxed, more) = self.search(Policy::Tf32, pass, &graph.graph, trial, log);
            turned_down.extend(more);
            if relaxed.is_some() {
                warning = Some(format!(
                    "warning: no deterministic cuDNN graph engine for the {} pass of the bf16 \
                     convolution {g:?} x {n}; using one whose sums may round partial results to \
                     bf16",
                    pass.name()
                ));
                best = relaxed;
            }
        }
        for why in &turned_down {
            let _ = writeln!(log, "    {}: passed over: {why}", pass.name());
        }
        let Some(Timed {
            plan,
            config,
            workspace,
            time,
        }) = best
        else {
            return Err(DnnError(format!(
                "no cuDNN graph engine for the {} pass of the convolution {g:?} x {n} runs under \
                 the precision policy ({}): {}",
                pass.name(),
                self.policy.describe(),
                if turned_down.is_empty() {
                    "the heuristics proposed none".to_string()
                } else {
                    turned_down.join("; ")
                }
            )));
        };
        let _ = writeln!(log, "  {}: chosen {time:.3} ms", pass.name());
        Ok(GraphPass {
            plan,
            _made_from: Some((config, graph)),
            workspace,
            time,
            warning,
        })
    }

    /// The engine configurations [`admitted`] for `graph` under `policy`, each
    /// built and timed: the fastest (its plan, configuration, workspace and
    /// time) and why the others were passed over.
    fn search(
        &self,
        policy: Policy,
        pass: Pass,
        graph: &Desc,
        trial: &mut Trial<T>,
        log: &mut String,
    ) -> (Option<Timed>, Vec<String>) {
        let mut turned_down = Vec::new();
        let mut best: Option<Timed> = None;
        let target = Target::Gpu(&self.handle);
        for (engine, config) in admitted(policy, pass, graph, target, &mut turned_down) {
            match self.build_and_time(&engine, &config, trial) {
                Ok((plan, workspace, time)) => {
                    let _ = writeln!(
                        log,
                        "  {}: {}, {time:.3} ms, workspace {}",
                        pass.name(),
                        engine.name(),
                        bytes(workspace)
                    );
                    if best.as_ref().is_none_or(|b| time < b.time) {
                        best = Some(Timed {
                            plan,
                            config,
                            workspace,
                            time,
                        });
                    }
                }
                Err(why) => turned_down.push(why),
            }
        }
        (best, turned_down)
    }

    /// An admitted engine configuration built into a plan and timed on the
    /// scratch tensors; the reason where it cannot be used.
    fn build_and_time(
        &self,
        engine: &Engine,
        config: &Desc,
        trial: &mut Trial<T>,
    ) -> Result<(Desc, usize, f32), String> {
        let name = engine.name();
        let (plan, workspace) = execution_plan(&name, config, Target::Gpu(&self.handle))?;
        self.grow_trial_workspace(trial, workspace)
            .map_err(|e| format!("{name}: {e}"))?;
        let pass = GraphPass {
            plan,
            _made_from: None,
            workspace,
            time: 0.0,
            warning: None,
        };
        let time = self
            .time_graph_pass(&pass, trial)
            .map_err(|e| format!("{name}: {e}"))?;
        Ok((pass.plan, workspace, time))
    }

    /// Makes the trials' workspace at least `len` bytes.
    fn grow_trial_workspace(&self, trial: &mut Trial<T>, len: usize) -> Result<(), DnnError> {
        if len > trial.workspace.as_ref().map_or(0, |w| w.len()) {
            trial.workspace = None;
            trial.workspace = Some(self.stream.alloc_zeros::<u8>(len).map_err(|e| {
                DnnError::call(&format!("allocating {} of timing workspace", bytes(len)), e)
            })?);
        }
        Ok(())
    }

    /// Milliseconds per execution of `pass` on the scratch tensors: one run
    /// untimed (first launches load modules), then the mean of [`TIMED_RUNS`].
    fn time_graph_pass(&self, pass: &GraphPass, trial: &mut Trial<T>) -> Result<f32, DnnError> {
        let stream = &*self.stream;
        let (x, _x) = trial.x.device_ptr_mut(stream);
        let (w, _w) = trial.w.device_ptr_mut(stream);
        let (y, _y) = trial.y.device_ptr_mut(stream);
        let (ws, _, _ws) = workspace_arg(&mut trial.workspace, stream);
        let timing = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
        let event = |what| {
            stream
                .record_event(timing)
                .map_err(|e| DnnError::call(&format!("recording the {what} of a timing"), e))
        };
        // One pack for every run, so that the timed window holds the
        // executions alone.
        let pack = variant_pack([x, w, y], ws)?;
        // SAFETY: the scratch tensors have the shape's sizes and element type,
        // and the workspace at least the plan's bytes (grown above).
        unsafe { pass.run(&self.handle, &pack)? };
        let start = event("start")?;
        for _ in 0..TIMED_RUNS {
            // SAFETY: as above.
            unsafe { pass.run(&self.handle, &pack)? };
        }
        let end = event("end")?;
        let total = start
            .elapsed_ms(&end)
            .map_err(|e| DnnError::call("reading a timing", e))?;
        Ok(total / TIMED_RUNS as f32)
    }
}

#[cfg(test)]
mod tests {
    use super::super::cudnn_on_cpu;
    use super::*;

    fn engine(notes: &[Note]) -> Engine {
        Engine {
            index: 0,
            notes: notes.iter().map(|&n| n as i32).collect(),
            behaviour: Vec::new(),
        }
    }

    /// Every descriptor the graph route builds (tensors, convolution, each
    /// pass's operation and graph) for the paper's five convolutions and the
    /// GPU tests' shapes is accepted by cuDNN itself, which checks types,
    /// counts and that the output's size follows from the input's, the
    /// filter's and the geometry (and the group count from the channels). No
    /// GPU is needed for these; planning and running the graphs does.
    #[test]
    fn cudnn_accepts_the_descriptors_of_every_pass() {
        if !cudnn_on_cpu::open() {
            return;
        }
        let shapes = cudnn_on_cpu::shapes();
        for g in &shapes {
            for pass in [Pass::Forward, Pass::BackwardData, Pass::BackwardFilter] {
                for data_type in [
                    cudnnDataType_t::CUDNN_DATA_BFLOAT16,
                    cudnnDataType_t::CUDNN_DATA_FLOAT,
                ] {
                    if let Err(e) = PassGraph::new(pass, g, 4, data_type, None) {
                        panic!("{} of {g:?} in {data_type:?}: {e}", pass.name());
                    }
                }
            }
        }
        // And it does check: an output one row short of what conv2 makes is
        // refused when the operation is finalized.
        let g = &shapes[1];
        let mut short = *g;
        short.output.height -= 1;
        let t = |uid, dims| tensor(uid, cudnnDataType_t::CUDNN_DATA_BFLOAT16, dims).unwrap();
        let x = t(1, [4, g.input.channels, g.input.height, g.input.width]);
        let w = t(2, [g.output.channels, g.in_per_group(), g.kernel, g.kernel]);
        let y = t(
            3,
            [
                4,
                short.output.channels,
                short.output.height,
                short.output.width,
            ],
        );
        let err = operation(Pass::Forward, [&x, &w, &y], &convolution(g).unwrap())
            .err()
            .expect("an output of the wrong size is refused");
        assert!(err.to_string().contains("forward operation"), "{err}");
    }

    /// An H100 SXM (80 GB HBM3) as cuDNN describes a device, written from
    /// NVIDIA's published properties of that GPU (tools/cudnn_device_properties.py
    /// reads a real device's, for comparison). Compiled in, so that the test
    /// binary carries it to a GPU machine.
    const H100: &str = include_str!("../../../../fixtures/cudnn-device-h100.json");

    /// A device described by the properties cuDNN serializes (JSON, the
    /// fields of `cudaDeviceProp` it plans with).
    fn described_device(json: &str) -> Result<Desc, DnnError> {
        let properties = Desc::new(DescKind::CUDNN_BACKEND_DEVICEPROP_DESCRIPTOR)?;
        // SAFETY: CUDNN_TYPE_CHAR is char; cuDNN copies the bytes.
        unsafe {
            properties.set(
                Attr::CUDNN_ATTR_DEVICEPROP_JSON_REPRESENTATION,
                Kind::CUDNN_TYPE_CHAR,
                json.as_bytes(),
            )?;
        }
        properties.finalize("device properties")?;
        Ok(properties)
    }

    /// What a pass's planning on the CPU gave: each planned engine (with
    /// "relaxed" where bf16's determinism had to be) and its workspace, whether
    /// one runs on tensor cores, and why the others were passed over.
    struct Planned {
        engines: Vec<String>,
        tensor_cores: bool,
        turned_down: Vec<String>,
    }

    /// The bf16 plans of `pass` over `n` images of `g` on `target`, chosen as
    /// [`Dnn::graph_pass`] chooses its candidates (a backward pass relaxes
    /// bf16's determinism where nothing else plans).
    fn plans_for(target: Target<'_>, pass: Pass, g: &ConvGeometry, n: usize) -> Planned {
        let graph = PassGraph::new(pass, g, n, cudnnDataType_t::CUDNN_DATA_BFLOAT16, None)
            .unwrap_or_else(|e| panic!("{} of {g:?}: {e}", pass.name()));
        let mut planned = Planned {
            engines: Vec::new(),
            tensor_cores: false,
            turned_down: Vec::new(),
        };
        for policy in [Policy::Bf16, Policy::Tf32] {
            if policy == Policy::Tf32 && (pass == Pass::Forward || !planned.engines.is_empty()) {
                break;
            }
            let relaxed = if policy == Policy::Bf16 {
                ""
            } else {
                " relaxed"
            };
            for (engine, config) in
                admitted(policy, pass, &graph.graph, target, &mut planned.turned_down)
            {
                match execution_plan(&engine.name(), &config, target) {
                    Ok((_, workspace)) => {
                        planned.tensor_cores |= engine.has(Note::CUDNN_NUMERICAL_NOTE_TENSOR_CORE);
                        let name = engine.name();
                        planned
                            .engines
                            .push(format!("{name}{relaxed} [{}]", bytes(workspace)));
                    }
                    Err(why) => planned.turned_down.push(why),
                }
            }
        }
        planned.turned_down.sort();
        planned.turned_down.dedup();
        planned
    }

    /// For every pass of every shape in bf16 (batch 128, and inference's
    /// forward pass at 256), cuDNN's heuristics propose engines the policy
    /// admits, and cuDNN builds their execution plans, a tensor-core one among
    /// them, planned for an H100 described by its properties
    /// (`fixtures/cudnn-device-h100.json`) rather than read from a GPU, as
    /// cuDNN 9.8 and later allow: the route's heuristics, engine notes,
    /// admission and plans, everything but the timings and executions, which
    /// need the GPU. Each pass's engines are printed.
    #[test]
    fn cudnn_plans_every_bf16_pass_for_a_described_h100() {
        if !cudnn_on_cpu::open_with_cublaslt() {
            return;
        }
        let properties =
            described_device(H100).unwrap_or_else(|e| panic!("cudnn-device-h100.json: {e}"));
        let target = Target::Described(&properties);
        let training = [Pass::Forward, Pass::BackwardData, Pass::BackwardFilter].map(|p| (p, 128));
        for g in &cudnn_on_cpu::shapes() {
            for (pass, n) in training.into_iter().chain([(Pass::Forward, 256)]) {
                let planned = plans_for(target, pass, g, n);
                let what = format!("the {} pass of {g:?} x {n}", pass.name());
                let why = planned.turned_down.join("; ");
                assert!(!planned.engines.is_empty(), "no plan for {what}: {why}");
                // bf16 pays only on tensor cores.
                let engines = planned.engines.join(", ");
                assert!(
                    planned.tensor_cores,
                    "no tensor-core plan for {what}: {engines}"
                );
                println!(
                    "{} {}: {} planned: {engines}; passed over: {why}",
                    shape_line(g, n),
                    pass.name(),
                    planned.engines.len(),
                );
            }
        }
    }

    /// cuDNN reads every property it plans with: a description that lacks
    /// one is refused, so the fixture above is a whole description.
    #[test]
    fn a_device_description_without_its_multiprocessor_count_is_refused() {
        if !cudnn_on_cpu::open() {
            return;
        }
        let without: String = H100
            .lines()
            .filter(|line| !line.contains("\"multiProcessorCount\""))
            .collect::<Vec<_>>()
            .join("\n");
        assert_ne!(without, H100.trim_end(), "the fixture names the count");
        assert!(described_device(&without).is_err());
    }

    #[test]
    fn channels_last_strides() {
        // [n, c, h, w] = [2, 3, 4, 5]: c is innermost, then w, then h.
        assert_eq!(nhwc_strides([2, 3, 4, 5]), [60, 1, 15, 3]);
    }

    #[test]
    fn bf16_turns_down_unordered_backward_sums_and_reduced_precision() {
        let nondeterministic = engine(&[
            Note::CUDNN_NUMERICAL_NOTE_TENSOR_CORE,
            Note::CUDNN_NUMERICAL_NOTE_NONDETERMINISTIC,
        ]);
        assert!(rejection(Policy::Bf16, Pass::Forward, &nondeterministic).is_none());
        assert!(rejection(Policy::Bf16, Pass::BackwardData, &nondeterministic).is_some());
        assert!(rejection(Policy::Bf16, Pass::BackwardFilter, &nondeterministic).is_some());
        let reduced = engine(&[Note::CUDNN_NUMERICAL_NOTE_REDUCED_PRECISION_REDUCTION]);
        assert!(rejection(Policy::Bf16, Pass::Forward, &reduced).is_some());
        let tensor_core = engine(&[Note::CUDNN_NUMERICAL_NOTE_TENSOR_CORE]);
        for pass in [Pass::Forward, Pass::BackwardData, Pass::BackwardFilter] {
            assert!(rejection(Policy::Bf16, pass, &tensor_core).is_none());
        }
    }

    #[test]
    fn fp32_turns_down_tensor_cores_and_exact_fp32_transforms() {
        let tensor_core = engine(&[Note::CUDNN_NUMERICAL_NOTE_TENSOR_CORE]);
        assert!(rejection(Policy::Fp32, Pass::Forward, &tensor_core).is_some());
        assert!(rejection(Policy::Fp32Fastest, Pass::Forward, &tensor_core).is_some());
        assert!(rejection(Policy::Tf32, Pass::Forward, &tensor_core).is_none());
        let winograd = engine(&[Note::CUDNN_NUMERICAL_NOTE_WINOGRAD_TILE_4x4]);
        assert!(rejection(Policy::Fp32, Pass::Forward, &winograd).is_some());
        assert!(rejection(Policy::Fp32Fastest, Pass::Forward, &winograd).is_none());
        let down = engine(&[Note::CUDNN_NUMERICAL_NOTE_DOWN_CONVERT_INPUTS]);
        assert!(rejection(Policy::Tf32, Pass::Forward, &down).is_some());
        assert!(rejection(Policy::Bf16Values, Pass::Forward, &down).is_some());
        assert!(rejection(Policy::Bf16Values, Pass::Forward, &winograd).is_some());
        assert!(rejection(Policy::Bf16Values, Pass::Forward, &tensor_core).is_none());
        assert!(rejection(Policy::Fp32, Pass::Forward, &engine(&[])).is_none());
    }

    #[test]
    fn engines_are_named_with_their_notes() {
        let mut e = engine(&[
            Note::CUDNN_NUMERICAL_NOTE_TENSOR_CORE,
            Note::CUDNN_NUMERICAL_NOTE_NONDETERMINISTIC,
        ]);
        e.index = 12;
        assert_eq!(e.name(), "engine 12 (tensor core, nondeterministic)");
        assert_eq!(engine(&[]).name(), "engine 0");
    }
}
