//! Evaluation with test-time multi-crop and ensembles: each example's class probabilities are
//! averaged over crops (the centre; or four corners and the centre; or those and their mirrors)
//! and over models (several weights files for one architecture).

use crate::augment::Pipeline;
use crate::data::Dataset;
use crate::params::Params;
use crate::reference::softmax;
use crate::train::RunError;
use crate::train::Session;
use ndarray::{Array2, ArrayD, Axis, IxDyn};

/// Averaged class probabilities `[n, classes]` of raw data `examples` (each of the data's shape).
pub fn probabilities(
    session: &Session,
    models: &[Params],
    pipeline: &Pipeline,
    examples: &[&[f32]],
    crops: usize,
) -> Result<Array2<f32>, RunError> {
    let prediction = session.prediction();
    let per_example: Vec<Vec<Vec<f32>>> = examples.iter().map(|e| pipeline.crops(e, crops)).collect();
    let n_crops = per_example.first().map_or(0, Vec::len);
    let mut input_shape = vec![examples.len()];
    input_shape.extend_from_slice(&pipeline.input);
    let mut sum: Option<Array2<f32>> = None;
    for params in models {
        for j in 0..n_crops {
            let x: Vec<f32> = per_example.iter().flat_map(|crops| crops[j].iter().copied()).collect();
            let x = ArrayD::from_shape_vec(IxDyn(&input_shape), x).expect("crops fill the input shape");
            let values = session.infer(params, x.view())?;
            let logits = values.get(prediction).expect("the prediction was computed");
            let p = softmax(&logits.view()).into_dimensionality::<ndarray::Ix2>().expect("class scores are vectors");
            sum = Some(match sum {
                Some(s) => s + &p,
                None => p,
            });
        }
    }
    let count = (models.len() * n_crops).max(1) as f32;
    Ok(sum.map(|s| s / count).unwrap_or_else(|| Array2::zeros((0, 0))))
}

/// Mean cross-entropy of the averaged probabilities and accuracy on the test split.
pub fn averaged(
    session: &Session,
    models: &[Params],
    data: &Dataset,
    pipeline: &Pipeline,
    crops: usize,
    batch: usize,
) -> Result<(f64, f64), RunError> {
    let f = data.features();
    let (mut loss, mut correct) = (0.0f64, 0usize);
    let indices: Vec<usize> = (0..data.test.len()).collect();
    for chunk in indices.chunks(batch.max(1)) {
        let examples: Vec<&[f32]> = chunk.iter().map(|&i| &data.test.x[i * f..(i + 1) * f]).collect();
        let p = probabilities(session, models, pipeline, &examples, crops)?;
        for (row, &i) in p.axis_iter(Axis(0)).zip(chunk) {
            let label = data.test.y[i] as usize;
            loss -= f64::from(row[label].max(1e-12)).ln();
            let best =
                row.iter().enumerate().fold((0, f32::NEG_INFINITY), |b, (k, &v)| if v > b.1 { (k, v) } else { b }).0;
            correct += usize::from(best == label);
        }
    }
    let n = data.test.len().max(1) as f64;
    Ok((loss / n, correct as f64 / n))
}
