//! A small line-chart writer for the training curves: an RGB raster with axes, tick labels in
//! a built-in 5×7 font, one polyline per panel, encoded as PNG (zlib via `flate2`, already in
//! the dependency tree through tch). No system libraries, no fonts to find.

use anyhow::{Context, Result};
use std::io::Write;
use std::path::Path;

/// One panel: a title and a curve of (x, y) points.
pub struct Panel<'a> {
    /// Drawn above the panel (upper-cased; letters, digits and `.-:/()=_` are available).
    pub title: &'a str,
    /// The points, in x order.
    pub points: &'a [(f64, f64)],
    /// Line colour.
    pub color: [u8; 3],
}

const W: usize = 720;
const PANEL_H: usize = 230;
const SCALE: usize = 2;

struct Canvas {
    w: usize,
    h: usize,
    px: Vec<u8>,
}

impl Canvas {
    fn new(w: usize, h: usize) -> Self {
        Canvas {
            w,
            h,
            px: vec![255; w * h * 3],
        }
    }

    fn set(&mut self, x: i64, y: i64, c: [u8; 3]) {
        if x >= 0 && y >= 0 && (x as usize) < self.w && (y as usize) < self.h {
            let i = (y as usize * self.w + x as usize) * 3;
            self.px[i..i + 3].copy_from_slice(&c);
        }
    }

    /// Bresenham, `thick` pixels wide.
    fn line(&mut self, (x0, y0): (i64, i64), (x1, y1): (i64, i64), c: [u8; 3], thick: i64) {
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
        let (mut x, mut y, mut err) = (x0, y0, dx + dy);
        loop {
            for ox in 0..thick {
                for oy in 0..thick {
                    self.set(x + ox, y + oy, c);
                }
            }
            if x == x1 && y == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
        }
    }

    fn text(&mut self, x: i64, y: i64, s: &str, c: [u8; 3]) {
        for (k, ch) in s.chars().enumerate() {
            let g = glyph(ch.to_ascii_uppercase());
            let gx = x + (k * 6 * SCALE) as i64;
            for (row, bits) in g.iter().enumerate() {
                for col in 0..5 {
                    if bits & (0x10 >> col) != 0 {
                        for oy in 0..SCALE {
                            for ox in 0..SCALE {
                                self.set(
                                    gx + (col * SCALE + ox) as i64,
                                    y + (row * SCALE + oy) as i64,
                                    c,
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    fn png(&self) -> Result<Vec<u8>> {
        let mut raw = Vec::with_capacity((self.w * 3 + 1) * self.h);
        for row in self.px.chunks_exact(self.w * 3) {
            raw.push(0); // filter: none
            raw.extend_from_slice(row);
        }
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(&raw)?;
        let idat = z.finish()?;
        let mut ihdr = Vec::new();
        ihdr.extend_from_slice(&(self.w as u32).to_be_bytes());
        ihdr.extend_from_slice(&(self.h as u32).to_be_bytes());
        ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB
        let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
        for (kind, data) in [
            (b"IHDR", &ihdr[..]),
            (b"IDAT", &idat[..]),
            (b"IEND", &[][..]),
        ] {
            out.extend_from_slice(&(data.len() as u32).to_be_bytes());
            let mut crc = crc32fast::Hasher::new();
            crc.update(kind);
            crc.update(data);
            out.extend_from_slice(kind);
            out.extend_from_slice(data);
            out.extend_from_slice(&crc.finalize().to_be_bytes());
        }
        Ok(out)
    }
}

/// Short tick label: 3 significant digits.
fn fmt_tick(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 1000.0 || v == v.trunc() {
        format!("{v:.0}")
    } else {
        let digits = (2 - v.abs().log10().floor() as i32).clamp(0, 6) as usize;
        format!("{v:.digits$}")
    }
}

/// Writes the panels stacked vertically to `path` as a PNG, `x_label` under the last one.
pub fn write_chart(path: &Path, x_label: &str, panels: &[Panel]) -> Result<()> {
    let h = PANEL_H * panels.len() + 40;
    let mut c = Canvas::new(W, h);
    let (left, right) = (90i64, (W - 20) as i64);
    let grey = [160, 160, 160];
    let black = [0, 0, 0];
    for (k, p) in panels.iter().enumerate() {
        let top = (k * PANEL_H) as i64 + 34;
        let bottom = top + PANEL_H as i64 - 64;
        c.text(left, top - 26, p.title, black);
        let pts: Vec<(f64, f64)> = p
            .points
            .iter()
            .copied()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .collect();
        if pts.is_empty() {
            continue;
        }
        let (xmin, xmax) = pts
            .iter()
            .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
        let (mut ymin, mut ymax) = pts
            .iter()
            .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
        if ymax - ymin < 1e-12 {
            ymin -= 0.5;
            ymax += 0.5;
        }
        let pad = (ymax - ymin) * 0.05;
        let (ymin, ymax) = (ymin - pad, ymax + pad);
        let xspan = (xmax - xmin).max(1e-12);
        let sx = |x: f64| left + ((x - xmin) / xspan * (right - left) as f64).round() as i64;
        let sy =
            |y: f64| bottom - ((y - ymin) / (ymax - ymin) * (bottom - top) as f64).round() as i64;
        for t in 0..=4 {
            let y = ymin + (ymax - ymin) * t as f64 / 4.0;
            c.line((left, sy(y)), (right, sy(y)), [232, 232, 232], 1);
            let label = fmt_tick(y);
            c.text(
                left - 8 - (label.len() * 6 * SCALE) as i64,
                sy(y) - 7,
                &label,
                black,
            );
        }
        for t in 0..=4 {
            let x = xmin + xspan * t as f64 / 4.0;
            let label = fmt_tick(x);
            c.line((sx(x), bottom), (sx(x), bottom + 5), black, 1);
            c.text(
                sx(x) - (label.len() * 3 * SCALE) as i64,
                bottom + 10,
                &label,
                black,
            );
        }
        c.line((left, top), (left, bottom), grey, 1);
        c.line((left, bottom), (right, bottom), grey, 1);
        for w in pts.windows(2) {
            c.line(
                (sx(w[0].0), sy(w[0].1)),
                (sx(w[1].0), sy(w[1].1)),
                p.color,
                2,
            );
        }
        if pts.len() == 1 {
            c.line(
                (sx(pts[0].0), sy(pts[0].1)),
                (sx(pts[0].0), sy(pts[0].1)),
                p.color,
                4,
            );
        }
    }
    let label_w = (x_label.len() * 6 * SCALE) as i64;
    c.text((left + right - label_w) / 2, h as i64 - 22, x_label, black);
    std::fs::write(path, c.png()?).with_context(|| format!("writing {}", path.display()))
}

fn glyph(ch: char) -> [u8; 7] {
    match ch {
        '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
        '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
        '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
        '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
        '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
        '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        '.' => [0, 0, 0, 0, 0, 0x0C, 0x0C],
        '-' => [0, 0, 0, 0x1F, 0, 0, 0],
        ':' => [0, 0x0C, 0x0C, 0, 0x0C, 0x0C, 0],
        '/' => [0, 0x01, 0x02, 0x04, 0x08, 0x10, 0],
        '(' => [0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02],
        ')' => [0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08],
        '=' => [0, 0, 0x1F, 0, 0x1F, 0, 0],
        '_' => [0, 0, 0, 0, 0, 0, 0x1F],
        'A' => [0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'B' => [0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E],
        'C' => [0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E],
        'D' => [0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C],
        'E' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F],
        'F' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10],
        'G' => [0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F],
        'H' => [0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'I' => [0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
        'J' => [0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C],
        'K' => [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11],
        'L' => [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F],
        'M' => [0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11],
        'N' => [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11],
        'O' => [0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'P' => [0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10],
        'Q' => [0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D],
        'R' => [0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11],
        'S' => [0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E],
        'T' => [0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
        'U' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'V' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04],
        'W' => [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A],
        'X' => [0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11],
        'Y' => [0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04],
        'Z' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F],
        _ => [0; 7],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_decodable_png_header() {
        let dir = std::env::temp_dir().join(format!("plot-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.png");
        let pts: Vec<(f64, f64)> = (0..20)
            .map(|i| (i as f64, 1.0 / (1.0 + i as f64)))
            .collect();
        write_chart(
            &path,
            "iteration",
            &[Panel {
                title: "loss",
                points: &pts,
                color: [200, 0, 0],
            }],
        )
        .unwrap();
        let b = std::fs::read(&path).unwrap();
        assert_eq!(&b[..8], b"\x89PNG\r\n\x1a\n");
        assert_eq!(&b[12..16], b"IHDR");
        assert_eq!(u32::from_be_bytes(b[16..20].try_into().unwrap()), W as u32);
        // The IDAT decompresses to one filter byte + RGB per row, with red pixels drawn.
        let len = u32::from_be_bytes(b[33..37].try_into().unwrap()) as usize;
        assert_eq!(&b[37..41], b"IDAT");
        let mut raw = Vec::new();
        std::io::Read::read_to_end(
            &mut flate2::read::ZlibDecoder::new(&b[41..41 + len]),
            &mut raw,
        )
        .unwrap();
        let h = u32::from_be_bytes(b[20..24].try_into().unwrap()) as usize;
        assert_eq!(raw.len(), h * (W * 3 + 1));
        assert!(raw.chunks_exact(3).any(|p| p == [200, 0, 0]));
        std::fs::remove_dir_all(dir).ok();
    }
}
