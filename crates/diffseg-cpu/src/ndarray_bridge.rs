//! From Burn tensors to this module's kernels and back, when the backend is
//! burn-ndarray. Each function returns its inputs untouched (`Err`) when it
//! does not apply, so the caller runs Burn's op instead.

use std::any::Any;

use burn::{
    nn::{conv::Conv2d, GroupNorm, Linear, PaddingConfig2d},
    tensor::{backend::Backend, Tensor, TensorPrimitive},
};
use burn_ndarray::NdArrayTensor;
use ndarray::{ArcArray, ArrayViewD, IxDyn};

use super::{
    attention::{self, Heads},
    conv::{self, ConvShape},
    gemm::{matmul_into, MatRef},
    kl, pointwise,
};

/// `value` as a `U` if that is its type.
fn downcast<T: 'static, U: 'static>(value: T) -> Result<U, T> {
    let mut slot = Some(value);
    match (&mut slot as &mut dyn Any).downcast_mut::<Option<U>>() {
        Some(target) => Ok(target.take().expect("slot was filled")),
        None => Err(slot.expect("slot is untouched")),
    }
}

/// A burn-ndarray f32 tensor's array (shared, copy-on-write).
type CpuArray = ArcArray<f32, IxDyn>;

/// A burn-ndarray tensor known to hold f32. Its storage may borrow a
/// memory-mapped weights file: read it through [`CpuTensor::view`], which
/// never copies.
struct CpuTensor(NdArrayTensor);

impl CpuTensor {
    fn view(&self) -> ArrayViewD<'_, f32> {
        match &self.0 {
            NdArrayTensor::F32(storage) => storage.view(),
            _ => unreachable!("CpuTensor holds f32"),
        }
    }

    /// The array in row-major layout, to be written in place (copied only if
    /// borrowed, shared or strided).
    fn into_standard_array(self) -> CpuArray {
        let array = match self.0 {
            NdArrayTensor::F32(storage) => storage.into_shared(),
            _ => unreachable!("CpuTensor holds f32"),
        };
        if array.is_standard_layout() {
            array
        } else {
            array.as_standard_layout().into_owned().into_shared()
        }
    }
}

/// The tensor as a [`CpuTensor`] when `B` is burn-ndarray and the tensor is f32.
fn to_cpu<B: Backend, const D: usize>(tensor: Tensor<B, D>) -> Result<CpuTensor, Tensor<B, D>> {
    let primitive = match tensor.into_primitive() {
        TensorPrimitive::Float(primitive) => primitive,
        quantized => return Err(Tensor::from_primitive(quantized)),
    };
    match downcast::<_, NdArrayTensor>(primitive) {
        Ok(tensor @ NdArrayTensor::F32(_)) => Ok(CpuTensor(tensor)),
        Ok(other) => Err(from_ndarray(other)),
        Err(primitive) => Err(Tensor::from_primitive(TensorPrimitive::Float(primitive))),
    }
}

/// Wraps a burn-ndarray tensor for `B`, which the caller knows is burn-ndarray.
fn from_ndarray<B: Backend, const D: usize>(tensor: NdArrayTensor) -> Tensor<B, D> {
    let primitive = downcast::<_, B::FloatTensorPrimitive>(tensor)
        .unwrap_or_else(|_| unreachable!("only called with burn-ndarray's tensor type"));
    Tensor::from_primitive(TensorPrimitive::Float(primitive))
}

fn from_cpu<B: Backend, const D: usize>(array: CpuArray) -> Tensor<B, D> {
    from_ndarray(NdArrayTensor::from(array))
}

fn from_vec<B: Backend, const D: usize>(data: Vec<f32>, shape: &[usize]) -> Tensor<B, D> {
    let array = CpuArray::from_shape_vec(IxDyn(shape), data).expect("length matches the shape");
    from_cpu(array)
}

/// Whether `B` is burn-ndarray with f32 floats, judged from a parameter.
fn is_cpu_f32<B: Backend, const D: usize>(param: &Tensor<B, D>) -> bool {
    param.dtype() == burn::tensor::DType::F32
        && std::any::TypeId::of::<B::FloatTensorPrimitive>()
            == std::any::TypeId::of::<NdArrayTensor>()
}

/// The view's elements in row-major order, borrowed when they already are.
fn contiguous<'a>(view: &ArrayViewD<'a, f32>) -> std::borrow::Cow<'a, [f32]> {
    match view.to_slice() {
        Some(slice) => slice.into(),
        None => view
            .as_standard_layout()
            .into_owned()
            .into_raw_vec_and_offset()
            .0
            .into(),
    }
}

/// A 2-D strided view of the last two axes of `view` at `offset`, if its
/// strides are non-negative.
fn matrix<'a>(view: &'a ArrayViewD<'_, f32>, offset: usize) -> Option<MatRef<'a>> {
    let nd = view.ndim();
    let strides = view.strides();
    if strides.iter().any(|&s| s < 0) {
        return None;
    }
    let data: &[f32] = if view.is_empty() {
        // No element to read; the pointer of an empty array may dangle.
        &[]
    } else {
        let extent = 1 + view
            .shape()
            .iter()
            .zip(strides)
            .map(|(&len, &stride)| (len - 1) * stride as usize)
            .sum::<usize>();
        // SAFETY: the view has at least one element, so its pointer points
        // into its allocation, and with non-negative strides every element
        // lies in `[ptr, ptr + extent)`, a range inside that allocation.
        unsafe { std::slice::from_raw_parts(view.as_ptr(), extent) }
    };
    Some(MatRef {
        data,
        offset,
        rows: view.shape()[nd - 2],
        cols: view.shape()[nd - 1],
        row_stride: strides[nd - 2] as usize,
        col_stride: strides[nd - 1] as usize,
    })
}

pub(super) fn conv2d<B: Backend>(
    conv: &Conv2d<B>,
    input: Tensor<B, 4>,
) -> Result<Tensor<B, 4>, Tensor<B, 4>> {
    let weight = conv.weight.val();
    let padding = match &*conv.padding {
        PaddingConfig2d::Valid => [0, 0],
        PaddingConfig2d::Explicit(height, width) => [*height, *width],
        PaddingConfig2d::Same => return Err(input),
    };
    if conv.groups != 1
        || conv.dilation != [1, 1]
        || !is_cpu_f32(&weight)
        || input.dtype() != weight.dtype()
    {
        return Err(input);
    }
    let [batch, in_channels, height, width] = input.dims();
    let out_channels = weight.dims()[0];
    let shape = ConvShape {
        in_channels,
        height,
        width,
        out_channels,
        kernel: conv.kernel_size,
        stride: conv.stride,
        padding,
    };
    let input = to_cpu(input)?;
    let weight = to_cpu(weight).unwrap_or_else(|_| unreachable!("checked above"));
    let bias = conv
        .bias
        .as_ref()
        .map(|bias| to_cpu(bias.val()).unwrap_or_else(|_| unreachable!("same backend")));
    let (input, weight) = (input.view(), weight.view());
    let (input, weight) = (contiguous(&input), contiguous(&weight));
    let bias_view = bias.as_ref().map(CpuTensor::view);
    let bias = bias_view.as_ref().map(contiguous);
    let [out_height, out_width] = shape.out_size();
    let image_out = out_channels * out_height * out_width;
    let image_in = in_channels * height * width;
    let mut output = vec![0.0f32; batch * image_out];
    for (image, out) in input
        .chunks(image_in.max(1))
        .zip(output.chunks_mut(image_out.max(1)))
    {
        conv::conv2d(&shape, image, &weight, bias.as_deref(), out);
    }
    Ok(from_vec(
        output,
        &[batch, out_channels, out_height, out_width],
    ))
}

pub(super) fn linear<B: Backend, const D: usize>(
    linear: &Linear<B>,
    input: Tensor<B, D>,
) -> Result<Tensor<B, D>, Tensor<B, D>> {
    let weight = linear.weight.val();
    if D < 2 || !is_cpu_f32(&weight) || input.dtype() != weight.dtype() {
        return Err(input);
    }
    let mut shape = input.dims();
    let [d_in, d_out] = weight.dims();
    let rows = shape[..D - 1].iter().product::<usize>();
    let input = to_cpu(input)?;
    let weight = to_cpu(weight).unwrap_or_else(|_| unreachable!("checked above"));
    let input_view = input.view();
    // Tokens often arrive transposed (`swap_dims` of a feature map): with one
    // batch they are a strided matrix the GEMM reads as it is.
    let mut tokens = input_view.clone();
    while tokens.ndim() > 2 && tokens.shape()[0] == 1 {
        tokens.index_axis_inplace(ndarray::Axis(0), 0);
    }
    let copied;
    let tokens = match (tokens.ndim() == 2).then(|| matrix(&tokens, 0)).flatten() {
        Some(tokens) => tokens,
        None => {
            copied = contiguous(&input_view);
            MatRef::row_major(&copied, rows, d_in)
        }
    };
    let weight_view = weight.view();
    let mut output = vec![0.0f32; rows * d_out];
    if let Some(bias) = &linear.bias {
        let bias = to_cpu(bias.val()).unwrap_or_else(|_| unreachable!("same backend"));
        let bias = bias.view();
        for row in output.chunks_mut(d_out.max(1)) {
            row.iter_mut().zip(bias.iter()).for_each(|(o, b)| *o = *b);
        }
    }
    let weight = matrix(&weight_view, 0).expect("parameters have positive strides");
    matmul_into(&mut output, d_out, tokens, weight, linear.bias.is_some());
    shape[D - 1] = d_out;
    Ok(from_vec(output, &shape))
}

/// [`crate::try_symmetric_kl`] on burn-ndarray f32 tensors of equal width.
#[allow(clippy::type_complexity)]
pub(super) fn symmetric_kl<B: Backend>(
    a: Tensor<B, 2>,
    b: Tensor<B, 2>,
    log_floor: f32,
) -> Result<Tensor<B, 2>, (Tensor<B, 2>, Tensor<B, 2>)> {
    let ([m, n], [p, width]) = (a.dims(), b.dims());
    if n != width || !is_cpu_f32(&a) || b.dtype() != a.dtype() {
        return Err((a, b));
    }
    let a = to_cpu(a).unwrap_or_else(|_| unreachable!("checked above"));
    let b = match to_cpu(b) {
        Ok(b) => b,
        Err(b) => return Err((from_ndarray(a.0), b)),
    };
    let (a_view, b_view) = (a.view(), b.view());
    let kl = kl::symmetric_kl(
        &contiguous(&a_view),
        m,
        &contiguous(&b_view),
        p,
        n,
        log_floor,
    );
    Ok(from_vec(kl, &[m, p]))
}

/// [`crate::try_add_normalized_rows`] on burn-ndarray f32 tensors.
#[allow(clippy::type_complexity)]
pub(super) fn add_normalized_rows<B: Backend>(
    total: Option<Tensor<B, 2>>,
    x: Tensor<B, 2>,
    rows: Option<&[usize]>,
    weight: f32,
) -> Result<Tensor<B, 2>, (Option<Tensor<B, 2>>, Tensor<B, 2>)> {
    let [sources, n] = x.dims();
    let out_rows = rows.map_or(sources, <[usize]>::len);
    let fits = rows.is_none_or(|rows| rows.iter().all(|&row| row < sources))
        && total
            .as_ref()
            .is_none_or(|total| total.dims() == [out_rows, n] && total.dtype() == x.dtype());
    if !fits || !is_cpu_f32(&x) {
        return Err((total, x));
    }
    let x = to_cpu(x).unwrap_or_else(|_| unreachable!("checked above"));
    let total = match total.map(to_cpu).transpose() {
        Ok(total) => total,
        Err(total) => return Err((Some(total), from_ndarray(x.0))),
    };
    let view = x.view();
    let values = contiguous(&view);
    let output = match total {
        Some(total) => {
            let mut array = total.into_standard_array();
            let out = array.as_slice_mut().expect("standard layout");
            pointwise::add_normalized_rows(out, &values, n, rows, weight, true);
            array
        }
        None => {
            let mut fresh = vec![0f32; out_rows * n];
            pointwise::add_normalized_rows(&mut fresh, &values, n, rows, weight, false);
            CpuArray::from_shape_vec(IxDyn(&[out_rows, n]), fresh).expect("length matches")
        }
    };
    Ok(from_cpu(output))
}

pub(super) fn matmul<B: Backend, const D: usize>(
    lhs: Tensor<B, D>,
    rhs: Tensor<B, D>,
) -> Result<Tensor<B, D>, (Tensor<B, D>, Tensor<B, D>)> {
    if D < 2 || !is_cpu_f32(&lhs) || rhs.dtype() != lhs.dtype() {
        return Err((lhs, rhs));
    }
    let (lhs_dims, rhs_dims) = (lhs.dims(), rhs.dims());
    let batch_dims: Option<Vec<usize>> = (0..D - 2)
        .map(|d| match (lhs_dims[d], rhs_dims[d]) {
            (a, b) if a == b || b == 1 => Some(a),
            (1, b) => Some(b),
            _ => None,
        })
        .collect();
    let Some(batch_dims) = batch_dims else {
        return Err((lhs, rhs)); // Burn reports the shape error.
    };
    let (m, n) = (lhs_dims[D - 2], rhs_dims[D - 1]);
    let lhs_tensor = to_cpu(lhs).unwrap_or_else(|_| unreachable!("checked above"));
    let rhs_tensor = match to_cpu(rhs) {
        Ok(rhs) => rhs,
        Err(rhs) => return Err((from_ndarray(lhs_tensor.0), rhs)),
    };
    let (lhs_view, rhs_view) = (lhs_tensor.view(), rhs_tensor.view());
    if matrix(&lhs_view, 0).is_none() || matrix(&rhs_view, 0).is_none() {
        return Err((from_ndarray(lhs_tensor.0), from_ndarray(rhs_tensor.0)));
    }
    // Element offset of each operand's matrix for a batch index, broadcasting axes of length 1.
    let offset = |view: &ArrayViewD<'_, f32>, mut index: usize| {
        let mut offset = 0;
        for d in (0..D - 2).rev() {
            let (len, i) = (batch_dims[d], index % batch_dims[d]);
            index /= len;
            if view.shape()[d] != 1 {
                offset += i * view.strides()[d] as usize;
            }
        }
        offset
    };
    let batches = batch_dims.iter().product::<usize>();
    let mut output = vec![0.0f32; batches * m * n];
    for (b, out) in output.chunks_mut((m * n).max(1)).enumerate().take(batches) {
        let lhs = matrix(&lhs_view, offset(&lhs_view, b)).expect("checked above");
        let rhs = matrix(&rhs_view, offset(&rhs_view, b)).expect("checked above");
        matmul_into(out, n, lhs, rhs, false);
    }
    let mut shape = batch_dims;
    shape.extend([m, n]);
    Ok(from_vec(output, &shape))
}

pub(super) fn softmax_last<B: Backend, const D: usize>(
    scores: Tensor<B, D>,
) -> Result<Tensor<B, D>, Tensor<B, D>> {
    if !is_cpu_f32(&scores) {
        return Err(scores);
    }
    let row_len = scores.dims()[D - 1];
    let mut array = to_cpu(scores)?.into_standard_array();
    let data = array.as_slice_mut().expect("standard layout");
    pointwise::softmax_rows(data, row_len);
    Ok(from_cpu(array))
}

pub(super) fn group_norm<B: Backend, const D: usize>(
    norm: &GroupNorm<B>,
    input: Tensor<B, D>,
    silu: bool,
) -> Result<Tensor<B, D>, Tensor<B, D>> {
    if D < 2 || !is_cpu_f32(&input) {
        return Err(input);
    }
    let dims = input.dims();
    let (channels, spatial) = (dims[1], dims[2..].iter().product::<usize>());
    let affine = match (&norm.gamma, &norm.beta) {
        (Some(gamma), Some(beta)) if norm.affine => Some((gamma.val(), beta.val())),
        _ => None,
    };
    let affine = match affine.map(|(gamma, beta)| (to_cpu(gamma), to_cpu(beta))) {
        Some((Ok(gamma), Ok(beta))) => Some((gamma, beta)),
        Some(_) => return Err(input),
        None => None,
    };
    let mut array = to_cpu(input)?.into_standard_array();
    let affine_views = affine.as_ref().map(|(g, b)| (g.view(), b.view()));
    let affine_slices = affine_views
        .as_ref()
        .map(|(g, b)| (contiguous(g), contiguous(b)));
    pointwise::GroupNorm {
        groups: norm.num_groups,
        epsilon: norm.epsilon,
        affine: affine_slices.as_ref().map(|(g, b)| (&g[..], &b[..])),
        silu,
    }
    .apply(
        array.as_slice_mut().expect("standard layout"),
        channels,
        spatial,
    );
    Ok(from_cpu(array))
}

#[allow(clippy::type_complexity)]
pub(super) fn attention_head_mean<B: Backend>(
    query: Tensor<B, 4>,
    key_t: Tensor<B, 4>,
    value: Tensor<B, 4>,
) -> Result<(Tensor<B, 4>, Tensor<B, 3>), (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>)> {
    if !is_cpu_f32(&query) || key_t.dtype() != query.dtype() || value.dtype() != query.dtype() {
        return Err((query, key_t, value));
    }
    let [batch, heads, queries, dim] = query.dims();
    let keys = key_t.dims()[3];
    let (query, key_t, value) = match (to_cpu(query), to_cpu(key_t), to_cpu(value)) {
        (Ok(q), Ok(k), Ok(v)) => (q, k, v),
        _ => unreachable!("one backend, checked above"),
    };
    let views = [query.view(), key_t.view(), value.view()];
    fn as_heads<'a>(view: &'a ArrayViewD<'_, f32>) -> Option<Heads<'a>> {
        matrix(view, 0).map(|matrix| Heads {
            matrix,
            batch_stride: view.strides()[0] as usize,
            head_stride: view.strides()[1] as usize,
        })
    }
    let (Some(q), Some(k), Some(v)) = (
        as_heads(&views[0]),
        as_heads(&views[1]),
        as_heads(&views[2]),
    ) else {
        drop(views);
        return Err((
            from_ndarray(query.0),
            from_ndarray(key_t.0),
            from_ndarray(value.0),
        ));
    };
    let (attended, mean) = attention::attention_head_mean(q, k, v, batch, heads);
    // Laid out [batch, queries, heads, d]: the permuted view is what the caller
    // swaps back and flattens for free.
    let attended = CpuArray::from_shape_vec(IxDyn(&[batch, queries, heads, dim]), attended)
        .expect("length matches the shape")
        .permuted_axes(IxDyn(&[0, 2, 1, 3]));
    Ok((from_cpu(attended), from_vec(mean, &[batch, queries, keys])))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::{Initializer, LinearConfig, LinearLayout};

    type B = burn_ndarray::NdArray<f32>;

    /// An empty array's pointer may dangle: its matrix must be an empty
    /// slice, not a one-element slice made from that pointer.
    #[test]
    fn an_empty_view_gives_an_empty_slice() {
        for shape in [[0, 3], [2, 0], [0, 0]] {
            let array = CpuArray::zeros(IxDyn(&shape));
            let view = array.view();
            let matrix = matrix(&view, 0).unwrap();
            assert!(matrix.data.is_empty(), "{shape:?}");
            assert_eq!([matrix.rows, matrix.cols], shape);
        }
        let array = CpuArray::zeros(IxDyn(&[2, 3]));
        assert_eq!(matrix(&array.view(), 0).unwrap().data.len(), 6);
    }

    /// Zero-sized dimensions through the public kernels: the shapes Burn
    /// gives, zeros where the inner dimension is empty.
    #[test]
    fn matmul_and_linear_take_zero_sized_dimensions() {
        let device = Default::default();
        let zeros = |shape: [usize; 3]| Tensor::<B, 3>::zeros(shape, &device);
        let ones = |shape: [usize; 3]| Tensor::<B, 3>::ones(shape, &device);
        for (lhs, rhs, out) in [
            ([1, 2, 0], [1, 0, 3], [1, 2, 3]),
            ([1, 0, 4], [1, 4, 3], [1, 0, 3]),
            ([1, 2, 4], [1, 4, 0], [1, 2, 0]),
            ([0, 2, 4], [0, 4, 3], [0, 2, 3]),
            ([2, 2, 0], [1, 0, 3], [2, 2, 3]),
        ] {
            let product = crate::matmul(ones(lhs), ones(rhs));
            assert_eq!(product.dims(), out, "{lhs:?} × {rhs:?}");
            let values = product.into_data().to_vec::<f32>().unwrap();
            assert!(values.iter().all(|&v| v == 0.0), "{lhs:?} × {rhs:?}");
        }
        let layer = LinearConfig::new(4, 3)
            .with_layout(LinearLayout::Col)
            .init::<B>(&device);
        assert_eq!(crate::linear(&layer, zeros([1, 0, 4])).dims(), [1, 0, 3]);
        assert_eq!(crate::linear(&layer, zeros([0, 5, 4])).dims(), [0, 5, 3]);
        // Zeros: Kaiming's bound divides by the fan-in.
        let no_inputs = LinearConfig::new(0, 3)
            .with_bias(false)
            .with_layout(LinearLayout::Col)
            .with_initializer(Initializer::Zeros)
            .init::<B>(&device);
        let output = crate::linear(&no_inputs, zeros([1, 2, 0]));
        assert_eq!(output.dims(), [1, 2, 3]);
        let values = output.into_data().to_vec::<f32>().unwrap();
        assert!(values.iter().all(|&v| v == 0.0));
    }
}
