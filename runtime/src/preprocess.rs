//! The `preprocess { ... }` steps of a train section, applied alike in training, evaluation and
//! prediction. Resizing and colour conversion happen as examples are read ([`Prep`]); scaling
//! and normalization are value steps that run after augmentation (they join the augmentation
//! pipeline's deterministic steps, [`crate::augment::Step::Scale`] and `Normalize`).

use crate::augment::{Image, Step};
use crate::data::{DataError, Dataset, Split};
use cnnc_compiler::train::FnCall;

/// A colour conversion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Colour {
    /// Three channels, red first (a grey image is repeated).
    Rgb,
    /// Three channels, blue first (a grey image is repeated).
    Bgr,
    /// One channel: luma, 0.299 R + 0.587 G + 0.114 B (ITU-R BT.601, as PIL and OpenCV).
    Grey,
}

/// What happens to an example as it is read.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Prep {
    /// Bilinear resizing to `(height, width)`, with pixel centres at half-integers and no
    /// antialiasing (PyTorch's `interpolate(mode="bilinear")`, OpenCV's `INTER_LINEAR`).
    pub resize: Option<(usize, usize)>,
    /// Colour conversion, before resizing.
    pub colour: Option<Colour>,
}

/// The checked `preprocess` calls as what happens when an example is read, and the value steps
/// to run after augmentation.
pub fn steps(calls: &[FnCall]) -> (Prep, Vec<Step>) {
    let mut prep = Prep::default();
    let mut values = Vec::new();
    for c in calls {
        match c.name.as_str() {
            "resize" => prep.resize = Some((c.num("height", 1.0) as usize, c.num("width", 1.0) as usize)),
            "rgb" => prep.colour = Some(Colour::Rgb),
            "bgr" => prep.colour = Some(Colour::Bgr),
            "grey" => prep.colour = Some(Colour::Grey),
            _ => values.extend(crate::augment::steps(std::slice::from_ref(c))),
        }
    }
    (prep, values)
}

impl Prep {
    /// Whether examples are read as they are.
    pub fn is_identity(&self) -> bool {
        self.resize.is_none() && self.colour.is_none()
    }

    /// The shape of an example of shape `data` once read.
    pub fn shape(&self, data: &[usize]) -> Vec<usize> {
        let mut shape = data.to_vec();
        if let [h, w, c] = &mut shape[..] {
            if let Some(colour) = self.colour {
                *c = if colour == Colour::Grey { 1 } else { 3 };
            }
            if let Some((rh, rw)) = self.resize {
                (*h, *w) = (rh, rw);
            }
        }
        shape
    }

    /// One image, converted then resized.
    pub fn image(&self, img: Image) -> Result<Image, DataError> {
        if img.h == 0 || img.w == 0 || img.c == 0 {
            return Err(DataError::Unsupported {
                what: format!("an image of {}×{}×{} has no pixel", img.h, img.w, img.c),
            });
        }
        let img = match self.colour {
            None => img,
            Some(colour) => convert(img, colour)?,
        };
        Ok(match self.resize {
            Some((h, w)) if (h, w) != (img.h, img.w) => resize(&img, h, w),
            _ => img,
        })
    }

    /// Every example of `data`, read as this says.
    pub fn dataset(&self, data: Dataset) -> Result<Dataset, DataError> {
        if self.is_identity() {
            return Ok(data);
        }
        let [h, w, c] = data.shape[..] else {
            return Err(DataError::Unsupported {
                what: format!(
                    "`preprocess` resizes and converts images [h, w, c]; the data's examples are {:?}",
                    data.shape
                ),
            });
        };
        if h * w * c == 0 {
            return Err(DataError::Unsupported { what: format!("the data's examples {:?} have no value", data.shape) });
        }
        // Resizing may grow the data: refuse what the machine cannot hold, before allocating it.
        let bytes =
            (data.train.len() + data.test.len()) as u64 * self.shape(&data.shape).iter().product::<usize>() as u64 * 4;
        if let Some(available) = crate::train::available_memory().filter(|&a| bytes > a) {
            return Err(DataError::Unsupported {
                what: format!(
                    "`preprocess` makes {} examples of {:?}: {} MiB, and {} MiB are available",
                    data.train.len() + data.test.len(),
                    self.shape(&data.shape),
                    bytes >> 20,
                    available >> 20
                ),
            });
        }
        let split = |s: &Split| -> Result<Split, DataError> {
            let mut x = Vec::new();
            for example in s.x.chunks(h * w * c) {
                x.extend(self.image(Image { h, w, c, data: example.to_vec() })?.data);
            }
            Ok(s.with_x(x))
        };
        let (train, test) = (split(&data.train)?, split(&data.test)?);
        Ok(Dataset { train, test, shape: self.shape(&data.shape), ..data })
    }
}

fn convert(img: Image, colour: Colour) -> Result<Image, DataError> {
    let (h, w) = (img.h, img.w);
    let data: Vec<f32> = match (img.c, colour) {
        (1, Colour::Grey) | (3, Colour::Rgb) => return Ok(img),
        (1, _) => img.data.iter().flat_map(|&v| [v, v, v]).collect(),
        (3, Colour::Bgr) => img.data.chunks_exact(3).flat_map(|p| [p[2], p[1], p[0]]).collect(),
        (3, Colour::Grey) => img.data.chunks_exact(3).map(|p| 0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2]).collect(),
        (c, _) => {
            return Err(DataError::Unsupported {
                what: format!("colour steps convert grey or RGB images, not {c} channels"),
            })
        }
    };
    let c = data.len() / (h * w).max(1);
    Ok(Image { h, w, c, data })
}

/// Bilinear resizing with half-pixel centres: output pixel `(y, x)` samples the input at
/// `((y + ½)·h_in/h − ½, (x + ½)·w_in/w − ½)`, clamped to the edges.
pub fn resize(img: &Image, h: usize, w: usize) -> Image {
    let c = img.c;
    let taps = |out: usize, inp: usize| -> Vec<(usize, usize, f32)> {
        (0..out)
            .map(|o| {
                let src = ((o as f64 + 0.5) * inp as f64 / out as f64 - 0.5).max(0.0);
                let lo = (src.floor() as usize).min(inp - 1);
                let hi = (lo + 1).min(inp - 1);
                (lo, hi, (src - lo as f64) as f32)
            })
            .collect()
    };
    let (ys, xs) = (taps(h, img.h), taps(w, img.w));
    let mut data = Vec::with_capacity(h * w * c);
    let at = |y: usize, x: usize, k: usize| img.data[(y * img.w + x) * c + k];
    for &(y0, y1, fy) in &ys {
        for &(x0, x1, fx) in &xs {
            for k in 0..c {
                let top = at(y0, x0, k) * (1.0 - fx) + at(y0, x1, k) * fx;
                let bottom = at(y1, x0, k) * (1.0 - fx) + at(y1, x1, k) * fx;
                data.push(top * (1.0 - fy) + bottom * fy);
            }
        }
    }
    Image { h, w, c, data }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resizing_keeps_constants_and_halves_by_averaging_pairs() {
        let flat = Image { h: 5, w: 7, c: 2, data: vec![0.25; 70] };
        assert!(resize(&flat, 3, 4).data.iter().all(|&v| (v - 0.25).abs() < 1e-7));
        // Halving: each output pixel sits between two input pixels, so it is their mean.
        let ramp = Image { h: 1, w: 4, c: 1, data: vec![0.0, 1.0, 2.0, 3.0] };
        assert_eq!(resize(&ramp, 1, 2).data, [0.5, 2.5]);
        // Doubling: edges clamp, the rest interpolate at quarters.
        let two = Image { h: 1, w: 2, c: 1, data: vec![0.0, 1.0] };
        assert_eq!(resize(&two, 1, 4).data, [0.0, 0.25, 0.75, 1.0]);
    }

    #[test]
    fn colours_convert_both_ways() {
        let grey = Image { h: 1, w: 2, c: 1, data: vec![0.2, 0.8] };
        let rgb = convert(grey.clone(), Colour::Rgb).unwrap();
        assert_eq!(rgb.data, [0.2, 0.2, 0.2, 0.8, 0.8, 0.8]);
        let back = convert(rgb, Colour::Grey).unwrap();
        assert!(back.data.iter().zip(&grey.data).all(|(a, b)| (a - b).abs() < 1e-6));
        let px = Image { h: 1, w: 1, c: 3, data: vec![1.0, 0.5, 0.0] };
        assert_eq!(convert(px.clone(), Colour::Bgr).unwrap().data, [0.0, 0.5, 1.0]);
        assert!((convert(px, Colour::Grey).unwrap().data[0] - (0.299 + 0.2935)).abs() < 1e-6);
        assert!(convert(Image { h: 1, w: 1, c: 2, data: vec![0.0; 2] }, Colour::Rgb).is_err());
    }
}
