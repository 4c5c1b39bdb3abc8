//! Augmentation on small synthetic images with known answers, the loader's determinism, and
//! multi-crop and ensemble averaging against a direct computation.

use cnnc_runtime::augment::{self, affine, Image, Pipeline, Step};
use cnnc_runtime::data::{Dataset, Split};
use cnnc_runtime::loader::Loader;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn ramp(h: usize, w: usize, c: usize) -> Image {
    Image { h, w, c, data: (0..h * w * c).map(|i| i as f32).collect() }
}

fn pipeline(steps: Vec<Step>, data: &[usize], input: &[usize]) -> Pipeline {
    Pipeline::new(steps, data, input, &Split::default(), 7).unwrap()
}

#[test]
fn mirror_equals_the_flipped_array() {
    let img = ramp(3, 4, 2);
    let p = pipeline(vec![Step::Mirror { p: 1.0 }], &[3, 4, 2], &[3, 4, 2]);
    let out = p.train(&img.data, &mut ChaCha8Rng::seed_from_u64(1));
    for y in 0..3 {
        for x in 0..4 {
            for k in 0..2 {
                assert_eq!(out[(y * 4 + x) * 2 + k], img.at(y, 3 - x, k));
            }
        }
    }
    let flipped = pipeline(vec![Step::FlipVertical { p: 1.0 }], &[3, 4, 2], &[3, 4, 2])
        .train(&img.data, &mut ChaCha8Rng::seed_from_u64(1));
    assert_eq!(flipped[..8], img.data[16..24]);
    // With p = 0 nothing happens.
    let same = pipeline(vec![Step::Mirror { p: 0.0 }], &[3, 4, 2], &[3, 4, 2])
        .train(&img.data, &mut ChaCha8Rng::seed_from_u64(1));
    assert_eq!(same, img.data);
}

#[test]
fn a_quarter_turn_equals_the_transposed_and_flipped_array() {
    let img = ramp(5, 5, 1);
    let out = augment::rotate(&img, std::f64::consts::FRAC_PI_2);
    for y in 0..5 {
        for x in 0..5 {
            // Transpose, then reverse the rows.
            let expected = img.at(x, 4 - y, 0);
            assert!((out.at(y, x, 0) - expected).abs() < 1e-4, "({y}, {x}): {} vs {expected}", out.at(y, x, 0));
        }
    }
    // Through the pipeline: ±90° drawn, always a quarter turn either way.
    let p = pipeline(vec![Step::Rotate { degrees: 0.0, p: 1.0 }], &[5, 5, 1], &[5, 5, 1]);
    assert_eq!(p.train(&img.data, &mut ChaCha8Rng::seed_from_u64(3)), img.data);
}

#[test]
fn shear_moves_rows_in_proportion_to_their_distance_from_the_centre() {
    let img = ramp(5, 9, 1);
    // Output (y, x) reads input (y, x + (y − 2)).
    let out = affine(&img, [[1.0, 0.0, 0.0], [1.0, 1.0, -2.0]]);
    assert_eq!(out.at(2, 4, 0), img.at(2, 4, 0));
    assert_eq!(out.at(4, 3, 0), img.at(4, 5, 0));
    assert_eq!(out.at(0, 5, 0), img.at(0, 3, 0));
}

#[test]
fn random_crop_takes_a_window_of_the_padded_image() {
    let img = ramp(6, 6, 1);
    let p = pipeline(vec![Step::RandomCrop { size: 6, pad: 2, p: 1.0 }], &[6, 6, 1], &[6, 6, 1]);
    let padded = img.pad(2);
    for seed in 0..20 {
        let out = p.train(&img.data, &mut ChaCha8Rng::seed_from_u64(seed));
        let found =
            (0..=4).flat_map(|y| (0..=4).map(move |x| (y, x))).any(|(y, x)| padded.crop(y, x, 6, 6).data == out);
        assert!(found, "seed {seed}: the crop is a window of the padded image");
    }
    // Evaluation takes the centre: the original image.
    assert_eq!(p.eval(&img.data), img.data);
}

#[test]
fn colour_shift_adds_one_bounded_offset_per_channel() {
    let img = ramp(4, 4, 3);
    let p = pipeline(vec![Step::ColorShift { max: 0.5, p: 1.0 }], &[4, 4, 3], &[4, 4, 3]);
    let out = p.train(&img.data, &mut ChaCha8Rng::seed_from_u64(9));
    for k in 0..3 {
        let d = out[k] - img.data[k];
        assert!(d.abs() <= 0.5);
        for i in 0..16 {
            assert!((out[i * 3 + k] - img.data[i * 3 + k] - d).abs() < 1e-5);
        }
    }
}

#[test]
fn pca_colour_uses_the_eigen_decomposition_of_the_rgb_covariance() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    // Correlated colours: G follows R, B is independent.
    let mut x = Vec::new();
    for _ in 0..400 {
        let r: f32 = rng.random_range(0.0..1.0);
        x.extend([r, 0.8 * r + rng.random_range(-0.1..0.1), rng.random_range(0.0..0.3)]);
    }
    let split = Split { x: x.clone(), y: vec![0; 100], ..Split::default() };
    let pca = augment::pca(&split);
    // Covariance computed directly.
    let n = x.len() / 3;
    let mean: Vec<f64> =
        (0..3).map(|k| x.iter().skip(k).step_by(3).map(|&v| f64::from(v)).sum::<f64>() / n as f64).collect();
    let mut cov = [[0f64; 3]; 3];
    for px in x.chunks(3) {
        for i in 0..3 {
            for j in 0..3 {
                cov[i][j] += (f64::from(px[i]) - mean[i]) * (f64::from(px[j]) - mean[j]) / (n - 1) as f64;
            }
        }
    }
    for (i, v) in pca.vectors.iter().enumerate() {
        let norm: f64 = v.iter().map(|&a| f64::from(a) * f64::from(a)).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4);
        for r in 0..3 {
            let cv: f64 = (0..3).map(|c| cov[r][c] * f64::from(v[c])).sum();
            assert!((cv - f64::from(pca.values[i]) * f64::from(v[r])).abs() < 1e-4, "C·v = λ·v");
        }
    }
    assert!(pca.values[0] >= pca.values[1] && pca.values[1] >= pca.values[2]);
    let trace: f64 = (0..3).map(|i| cov[i][i]).sum();
    assert!((pca.values.iter().map(|&v| f64::from(v)).sum::<f64>() - trace).abs() < 1e-4);
    // The step adds one shift Σ αᵢ λᵢ pᵢ to every pixel.
    let p = Pipeline::new(vec![Step::PcaColor { std: 0.5, p: 1.0 }], &[2, 2, 3], &[2, 2, 3], &split, 1).unwrap();
    let img = ramp(2, 2, 3);
    let out = p.train(&img.data, &mut ChaCha8Rng::seed_from_u64(2));
    let shift: Vec<f32> = (0..3).map(|k| out[k] - img.data[k]).collect();
    for i in 0..4 {
        for k in 0..3 {
            assert!((out[i * 3 + k] - img.data[i * 3 + k] - shift[k]).abs() < 1e-5);
        }
    }
    // The shift lies in the span of the eigenvectors weighted by their eigenvalues: solve for α.
    let alpha: Vec<f32> =
        (0..3).map(|i| (0..3).map(|k| shift[k] * pca.vectors[i][k]).sum::<f32>() / pca.values[i].max(1e-12)).collect();
    let rebuilt: Vec<f32> =
        (0..3).map(|k| (0..3).map(|i| alpha[i] * pca.values[i] * pca.vectors[i][k]).sum()).collect();
    for k in 0..3 {
        assert!((rebuilt[k] - shift[k]).abs() < 1e-4);
    }
}

fn dataset(n: usize) -> Dataset {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let x: Vec<f32> = (0..n * 8 * 8).map(|_| rng.random_range(0.0..1.0)).collect();
    let y: Vec<u32> = (0..n).map(|i| (i % 10) as u32).collect();
    Dataset {
        train: Split { x: x.clone(), y: y.clone(), ..Split::default() },
        test: Split { x, y, ..Split::default() },
        classes: 10,
        shape: vec![8, 8, 1],
        pad: 0,
        scale: 1.0,
        target: vec![],
    }
}

fn full_pipeline() -> Vec<Step> {
    vec![
        Step::Mirror { p: 0.5 },
        Step::RandomCrop { size: 6, pad: 1, p: 1.0 },
        Step::Rotate { degrees: 15.0, p: 0.5 },
        Step::Shear { degrees: 10.0, p: 0.5 },
        Step::Warp { alpha: 1.0, sigma: 2.0, p: 0.5 },
        Step::Brightness { max: 0.1, p: 0.5 },
        Step::Contrast { max: 0.2, p: 0.5 },
        Step::Normalize { mean: vec![0.5], std: vec![0.25] },
    ]
}

#[test]
fn batches_depend_on_the_seed_only_never_on_the_workers_and_keep_their_labels() {
    let data = dataset(50);
    let p = Pipeline::new(full_pipeline(), &[8, 8, 1], &[6, 6, 1], &data.train, 3).unwrap();
    let order: Vec<usize> = (0..50).rev().collect();
    let collect = |workers: usize| {
        let loader = Loader { data: &data, pipeline: &p, workers };
        let mut batches = Vec::new();
        loader
            .epoch(&order, 8, 2, |x, y, _| {
                batches.push((x, y));
                Ok::<(), ()>(())
            })
            .unwrap();
        batches
    };
    let one = collect(1);
    assert_eq!(one.len(), 7);
    for workers in [2, 3, 8] {
        assert_eq!(collect(workers), one, "{workers} workers");
    }
    for (b, (x, y)) in one.iter().enumerate() {
        assert_eq!(x.shape(), &[y.len(), 6, 6, 1]);
        for (j, &label) in y.iter().enumerate() {
            assert_eq!(label as u32, data.train.y[order[b * 8 + j]], "labels are never changed");
        }
    }
    // Another epoch draws other augmentations.
    let loader = Loader { data: &data, pipeline: &p, workers: 2 };
    assert_ne!(loader.batch(&data.train, &[0, 1], 2).0, loader.batch(&data.train, &[0, 1], 3).0);
    assert_eq!(loader.batch(&data.train, &[0, 1], 2), loader.batch(&data.train, &[0, 1], 2));
    // An example that comes again in a batch (an identity of one image) is augmented anew, the
    // same way every time; its first copy is what it is alone.
    let (x, _) = loader.batch(&data.train, &[4, 4, 4], 2);
    let copies: Vec<Vec<f32>> = x.outer_iter().map(|c| c.iter().copied().collect()).collect();
    assert!(copies[0] != copies[1] && copies[1] != copies[2] && copies[0] != copies[2]);
    assert_eq!(x, loader.batch(&data.train, &[4, 4, 4], 2).0);
    assert_eq!(loader.batch(&data.train, &[4], 2).0.iter().copied().collect::<Vec<_>>(), copies[0]);
}

#[test]
fn ten_crops_are_the_corners_the_centre_and_their_mirrors() {
    let img = ramp(4, 4, 1);
    let p = pipeline(vec![Step::RandomCrop { size: 2, pad: 0, p: 1.0 }], &[4, 4, 1], &[2, 2, 1]);
    let crops = p.crops(&img.data, 10);
    assert_eq!(crops.len(), 10);
    let window = |y, x| img.crop(y, x, 2, 2).data;
    assert_eq!(crops[..5], [window(0, 0), window(0, 2), window(2, 0), window(2, 2), window(1, 1)]);
    for i in 0..5 {
        let c = Image { h: 2, w: 2, c: 1, data: crops[i].clone() };
        assert_eq!(crops[i + 5], c.mirror().data);
    }
    assert_eq!(p.crops(&img.data, 1), vec![window(1, 1)]);
}

#[test]
fn multi_crop_and_ensembles_average_the_probabilities() {
    use cnnc_runtime::executor::Executor;
    use cnnc_runtime::params::Params;
    use cnnc_runtime::reference::{softmax, Ctx};
    use cnnc_runtime::train::Session;
    let text = "model M {\n input image: [6, 6, 1]\n output logits = image |> conv(4, 3x3) |> relu |> flatten |> dense(10)\n}\n\
                train M {\n data csv(\"x.csv\", shape: [8, 8, 1])\n loss softmax_cross_entropy(logits, label)\n optimizer sgd(lr: 0.1)\n augment { random_crop(6, pad: 1) }\n}\n";
    let c = cnnc_compiler::compile_source("m.cnn", None, text.as_bytes());
    assert!(!c.has_errors());
    let session = Session::new(&c.models[0], &c.trains[0]).unwrap();
    let models = [Params::init(&session.tg.graph, 1), Params::init(&session.tg.graph, 2)];
    let data = dataset(6);
    let p = Pipeline::new(augment::steps(&c.trains[0].augment), &[8, 8, 1], &[6, 6, 1], &data.train, 0).unwrap();
    let examples: Vec<&[f32]> = (0..6).map(|i| &data.test.x[i * 64..(i + 1) * 64]).collect();
    let averaged = cnnc_runtime::evaluate::probabilities(&session, &models, &p, &examples, 10).unwrap();
    // Directly: every model on every crop of every example, one at a time.
    let prediction = session.prediction();
    let exec = Executor::new(&session.infer, &models[0].layout, &[prediction.into()]).unwrap();
    let input = session.infer.inputs()[0];
    for (i, example) in examples.iter().enumerate() {
        let mut sum = [0f32; 10];
        for params in &models {
            for crop in p.crops(example, 10) {
                let x = ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&[1, 6, 6, 1]), crop).unwrap();
                let v = exec.run(&session.infer, params, &[(input, x.view())], Ctx::default()).unwrap();
                let probs = softmax(&v.get(prediction).unwrap().view());
                for (s, q) in sum.iter_mut().zip(probs.iter()) {
                    *s += q / 20.0;
                }
            }
        }
        for k in 0..10 {
            assert!((averaged[[i, k]] - sum[k]).abs() < 1e-6, "example {i} class {k}");
        }
    }
    // The accuracy of the averaged prediction.
    let (_, acc) = cnnc_runtime::evaluate::averaged(&session, &models, &data, &p, 10, 4).unwrap();
    let direct = (0..6)
        .filter(|&i| {
            let row = averaged.row(i);
            let best = (0..10).max_by(|&a, &b| row[a].total_cmp(&row[b]).then(b.cmp(&a))).unwrap();
            best == data.test.y[i] as usize
        })
        .count();
    assert!((acc - direct as f64 / 6.0).abs() < 1e-9);
}

/// An image of one bright rectangle (rows `y0..y1`, columns `x0..x1`) on black.
fn rectangle(h: usize, w: usize, (y0, y1, x0, x1): (usize, usize, usize, usize)) -> Image {
    let mut img = Image { h, w, c: 1, data: vec![0.0; h * w] };
    for y in y0..y1 {
        for x in x0..x1 {
            img.data[y * w + x] = 1.0;
        }
    }
    img
}

/// The extent `[x0, y0, x1, y1]` of the pixels above 0.5, as fractions of the image.
fn extent(data: &[f32], h: usize, w: usize) -> Option<[f32; 4]> {
    let mut e: Option<[usize; 4]> = None;
    for y in 0..h {
        for x in 0..w {
            if data[y * w + x] > 0.5 {
                let r = e.get_or_insert([x, y, x + 1, y + 1]);
                *r = [r[0].min(x), r[1].min(y), r[2].max(x + 1), r[3].max(y + 1)];
            }
        }
    }
    e.map(|r| [r[0] as f32 / w as f32, r[1] as f32 / h as f32, r[2] as f32 / w as f32, r[3] as f32 / h as f32])
}

/// Boxes and points move with the pixels through mirrors, flips, shifting crops and resized
/// crops: after every augmentation the moved box is where the rectangle's pixels are (within a
/// pixel and a half, for the resampling), and a point on a corner stays on it.
#[test]
fn boxes_and_points_follow_the_pixels() {
    let (h, w) = (32, 40);
    let steps = vec![
        Step::Mirror { p: 0.5 },
        Step::FlipVertical { p: 0.5 },
        Step::RandomCrop { size: 32, pad: 6, p: 1.0 },
        Step::RandomResizedCrop { size: 32, scale: (0.6, 1.0), p: 0.7 },
    ];
    let p = pipeline(steps, &[h, w, 1], &[32, 32, 1]);
    let (mut kept, mut dropped) = (0, 0);
    // A rectangle in the middle, and one on the right edge that crops cut off.
    for (y0, y1, x0, x1) in [(8, 20, 6, 30), (2, 8, 33, 40)] {
        let img = rectangle(h, w, (y0, y1, x0, x1));
        let (bw, bh) = ((x1 - x0) as f32 / 40.0, (y1 - y0) as f32 / 32.0);
        let (cx, cy) = ((x0 + x1) as f32 / 2.0 / 40.0, (y0 + y1) as f32 / 2.0 / 32.0);
        for seed in 0..200 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut boxes = vec![3.0, cx, cy, bw, bh, -1.0, 0.0, 0.0, 0.0, 0.0];
            let out = p.train_moving(&img.data, &mut boxes, &[2, 5], &mut rng);
            let seen = extent(&out, 32, 32);
            if boxes[0] < 0.0 {
                // Dropped: less than 40 % of the rectangle is left in the image.
                dropped += 1;
                continue;
            }
            kept += 1;
            assert_eq!(boxes[5], -1.0, "the unused row stays unused");
            let e = seen.unwrap_or_else(|| panic!("seed {seed}: a kept box over no pixels"));
            let corners = [
                boxes[1] - boxes[3] / 2.0,
                boxes[2] - boxes[4] / 2.0,
                boxes[1] + boxes[3] / 2.0,
                boxes[2] + boxes[4] / 2.0,
            ];
            for k in 0..4 {
                assert!((corners[k] - e[k]).abs() <= 1.5 / 32.0 + 1e-4, "seed {seed}: box {corners:?}, pixels {e:?}");
            }
            // The same draw with a point on the rectangle's top-left pixel.
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut point = [(x0 as f32 + 0.5) / 40.0, (y0 as f32 + 0.5) / 32.0];
            p.train_moving(&img.data, &mut point, &[2], &mut rng);
            let (px, py) = (point[0] * 32.0, point[1] * 32.0);
            if (0.0..32.0).contains(&px) && (0.0..32.0).contains(&py) {
                let near = (-1i32..=1).any(|dy| {
                    (-1i32..=1).any(|dx| {
                        let (x, y) = (px as i32 + dx, py as i32 + dy);
                        (0..32).contains(&x) && (0..32).contains(&y) && out[(y * 32 + x) as usize] > 0.3
                    })
                });
                assert!(near, "seed {seed}: the point ({px}, {py}) left the rectangle");
            }
        }
    }
    assert!(kept > 250 && dropped > 0, "both cases seen: {kept} kept, {dropped} dropped");
}

#[test]
fn evaluation_moves_the_test_boxes_with_its_centre_crop() {
    let p = pipeline(vec![Step::RandomCrop { size: 24, pad: 2, p: 1.0 }], &[32, 32, 1], &[24, 24, 1]);
    let img = rectangle(32, 32, (10, 20, 10, 20));
    let x = p.eval(&img.data);
    let e = extent(&x, 24, 24).unwrap();
    let mut boxes = [0.0, 15.0 / 32.0, 15.0 / 32.0, 10.0 / 32.0, 10.0 / 32.0];
    p.eval_map().move_targets(&mut boxes, &[1, 5]);
    let corners =
        [boxes[1] - boxes[3] / 2.0, boxes[2] - boxes[4] / 2.0, boxes[1] + boxes[3] / 2.0, boxes[2] + boxes[4] / 2.0];
    for k in 0..4 {
        assert!((corners[k] - e[k]).abs() < 1e-5, "{corners:?} vs {e:?}");
    }
}

#[test]
fn crops_larger_than_the_examples_are_refused() {
    let big = Step::RandomResizedCrop { size: 40, scale: (0.5, 1.0), p: 1.0 };
    let e = Pipeline::new(vec![big], &[32, 32, 1], &[40, 40, 1], &Split::default(), 0).unwrap_err();
    assert!(e.to_string().contains("a 40×40 crop does not fit in the 32×32 examples"), "{e}");
    let padded = Step::RandomCrop { size: 36, pad: 1, p: 1.0 };
    let e = Pipeline::new(vec![padded], &[32, 32, 1], &[36, 36, 1], &Split::default(), 0).unwrap_err();
    assert!(e.to_string().contains("padded by 1"), "{e}");
    assert!(Pipeline::new(
        vec![Step::RandomCrop { size: 36, pad: 2, p: 1.0 }],
        &[32, 32, 1],
        &[36, 36, 1],
        &Split::default(),
        0
    )
    .is_ok());
    // A chain of crops whose last pads less than the input needs: evaluation's centre crop of
    // the input's size would not fit in the example padded by the last crop's padding.
    let chain = vec![Step::RandomCrop { size: 40, pad: 6, p: 1.0 }, Step::RandomCrop { size: 38, pad: 0, p: 1.0 }];
    let e = Pipeline::new(chain, &[28, 28, 1], &[38, 38, 1], &Split::default(), 0).unwrap_err();
    assert!(e.to_string().contains("a 38×38 crop does not fit in the 28×28 examples"), "{e}");
}
