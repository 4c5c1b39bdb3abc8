//! Images as `[h, w, c]` f32 arrays and the geometric operations augmentation needs: flips, pads,
//! crops, bilinear resampling under an affine map or a displacement field, Gaussian smoothing.

use rand::{Rng, RngExt};

/// An image: `h × w` pixels of `c` channels, row-major, channels last.
#[derive(Clone, Debug, PartialEq)]
pub struct Image {
    /// Rows.
    pub h: usize,
    /// Columns.
    pub w: usize,
    /// Channels.
    pub c: usize,
    /// `h·w·c` values.
    pub data: Vec<f32>,
}

impl Image {
    /// The value at row `y`, column `x`, channel `k`.
    pub fn at(&self, y: usize, x: usize, k: usize) -> f32 {
        self.data[(y * self.w + x) * self.c + k]
    }

    /// The image with columns in reverse order.
    pub fn mirror(&self) -> Image {
        self.remap(self.h, self.w, |y, x| (y, self.w - 1 - x))
    }

    /// The image with rows in reverse order.
    pub fn flip_vertical(&self) -> Image {
        self.remap(self.h, self.w, |y, x| (self.h - 1 - y, x))
    }

    fn remap(&self, h: usize, w: usize, from: impl Fn(usize, usize) -> (usize, usize)) -> Image {
        let mut data = Vec::with_capacity(h * w * self.c);
        for y in 0..h {
            for x in 0..w {
                let (sy, sx) = from(y, x);
                data.extend_from_slice(&self.data[(sy * self.w + sx) * self.c..(sy * self.w + sx + 1) * self.c]);
            }
        }
        Image { h, w, c: self.c, data }
    }

    /// Zero padding of `p` pixels on every side.
    pub fn pad(&self, p: usize) -> Image {
        if p == 0 {
            return self.clone();
        }
        let (h, w) = (self.h + 2 * p, self.w + 2 * p);
        let mut data = vec![0f32; h * w * self.c];
        for y in 0..self.h {
            let dst = ((y + p) * w + p) * self.c;
            data[dst..dst + self.w * self.c]
                .copy_from_slice(&self.data[y * self.w * self.c..(y + 1) * self.w * self.c]);
        }
        Image { h, w, c: self.c, data }
    }

    /// The `h × w` window whose top-left pixel is `(y, x)`.
    pub fn crop(&self, y: usize, x: usize, h: usize, w: usize) -> Image {
        self.remap(h, w, |r, q| (y + r, x + q))
    }

    /// Bilinear resize to `h × w` (pixel centres aligned).
    pub fn resize(&self, h: usize, w: usize) -> Image {
        let sy = self.h as f64 / h as f64;
        let sx = self.w as f64 / w as f64;
        let mut out = Image { h, w, c: self.c, data: vec![0.0; h * w * self.c] };
        for y in 0..h {
            for x in 0..w {
                let (fy, fx) = ((y as f64 + 0.5) * sy - 0.5, (x as f64 + 0.5) * sx - 0.5);
                for k in 0..self.c {
                    out.data[(y * w + x) * self.c + k] =
                        self.sample(fy.clamp(0.0, (self.h - 1) as f64), fx.clamp(0.0, (self.w - 1) as f64), k);
                }
            }
        }
        out
    }

    /// Bilinear interpolation at a real position; zero outside the image.
    pub fn sample(&self, y: f64, x: f64, k: usize) -> f32 {
        let (y0, x0) = (y.floor(), x.floor());
        let (ty, tx) = ((y - y0) as f32, (x - x0) as f32);
        let get = |yy: f64, xx: f64| {
            if yy < 0.0 || xx < 0.0 || yy >= self.h as f64 || xx >= self.w as f64 {
                0.0
            } else {
                self.at(yy as usize, xx as usize, k)
            }
        };
        let top = get(y0, x0) * (1.0 - tx) + get(y0, x0 + 1.0) * tx;
        let bottom = get(y0 + 1.0, x0) * (1.0 - tx) + get(y0 + 1.0, x0 + 1.0) * tx;
        top * (1.0 - ty) + bottom * ty
    }

    /// Applies `f(channel, value)` to every value.
    pub fn map_channels(mut self, f: impl Fn(usize, f32) -> f32) -> Image {
        let c = self.c;
        for (i, v) in self.data.iter_mut().enumerate() {
            *v = f(i % c, *v);
        }
        self
    }

    /// `(x − mean_c) / std_c`; a single mean or deviation applies to every channel.
    pub fn normalize(&mut self, mean: &[f32], std: &[f32]) {
        let pick = |v: &[f32], c: usize, default: f32| v.get(c).or(v.first()).copied().unwrap_or(default);
        let c = self.c;
        for (i, v) in self.data.iter_mut().enumerate() {
            *v = (*v - pick(mean, i % c, 0.0)) / pick(std, i % c, 1.0);
        }
    }
}

/// Resamples under an affine map: output pixel `(y, x)` reads input `(a·[y, x, 1], b·[y, x, 1])`.
pub fn affine(img: &Image, m: [[f64; 3]; 2]) -> Image {
    let mut out = Image { h: img.h, w: img.w, c: img.c, data: vec![0.0; img.data.len()] };
    for y in 0..img.h {
        for x in 0..img.w {
            let (yf, xf) = (y as f64, x as f64);
            let sy = m[0][0] * yf + m[0][1] * xf + m[0][2];
            let sx = m[1][0] * yf + m[1][1] * xf + m[1][2];
            for k in 0..img.c {
                out.data[(y * img.w + x) * img.c + k] = img.sample(sy, sx, k);
            }
        }
    }
    out
}

/// Rotation by `angle` radians (counter-clockwise) about the image centre, zero fill.
pub fn rotate(img: &Image, angle: f64) -> Image {
    let (cy, cx) = ((img.h as f64 - 1.0) / 2.0, (img.w as f64 - 1.0) / 2.0);
    let (s, c) = angle.sin_cos();
    // Inverse map: rotate the output coordinate by −angle about the centre.
    affine(img, [[c, s, cy - c * cy - s * cx], [-s, c, cx + s * cy - c * cx]])
}

fn gaussian_blur(field: &[f64], h: usize, w: usize, sigma: f64) -> Vec<f64> {
    let radius = (3.0 * sigma).ceil().max(1.0) as isize;
    let kernel: Vec<f64> = (-radius..=radius).map(|i| (-(i * i) as f64 / (2.0 * sigma * sigma)).exp()).collect();
    let total: f64 = kernel.iter().sum();
    let pass = |src: &[f64], horizontal: bool| {
        let mut out = vec![0.0; src.len()];
        for y in 0..h as isize {
            for x in 0..w as isize {
                let mut acc = 0.0;
                for (j, kv) in kernel.iter().enumerate() {
                    let o = j as isize - radius;
                    let (yy, xx) = if horizontal { (y, x + o) } else { (y + o, x) };
                    if yy >= 0 && xx >= 0 && yy < h as isize && xx < w as isize {
                        acc += kv * src[(yy as usize) * w + xx as usize];
                    }
                }
                out[(y as usize) * w + x as usize] = acc / total;
            }
        }
        out
    };
    pass(&pass(field, true), false)
}

/// Elastic distortion: displacement fields uniform in [−1, 1], smoothed by a Gaussian of `sigma`
/// pixels, scaled by `alpha`; each output pixel reads the input at its displaced position.
pub fn elastic(img: &Image, alpha: f64, sigma: f64, rng: &mut impl Rng) -> Image {
    let n = img.h * img.w;
    let mut field = || -> Vec<f64> {
        let raw: Vec<f64> = (0..n).map(|_| rng.random_range(-1.0..=1.0)).collect();
        gaussian_blur(&raw, img.h, img.w, sigma.max(0.1)).into_iter().map(|v| v * alpha).collect()
    };
    let (dy, dx) = (field(), field());
    let mut out = Image { h: img.h, w: img.w, c: img.c, data: vec![0.0; img.data.len()] };
    for y in 0..img.h {
        for x in 0..img.w {
            let i = y * img.w + x;
            for k in 0..img.c {
                out.data[i * img.c + k] = img.sample(y as f64 + dy[i], x as f64 + dx[i], k);
            }
        }
    }
    out
}
