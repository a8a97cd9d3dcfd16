//! `launch.svg`: where the Torito monitor's time goes up to `kernel_main`
//! (the median of each phase, stacked, per configuration) and every
//! configuration's whole launch (median).

use std::path::Path;

use plotters::prelude::*;

use super::launch::{Kind, Launch, POINTS, segments};
use super::summary;

/// Draw the launch chart into `path`.
pub fn write_svg(l: &Launch, path: &Path) -> Result<(), String> {
    let root = SVGBackend::new(path, (1280, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let (left, right) = root.split_horizontally(680);
    let e = |e: &dyn std::fmt::Display| e.to_string();

    // Left: where the Torito monitor's time goes up to kernel_main (the
    // guest's stop for the bare guest): the median of each segment.
    let torito: Vec<usize> = (0..l.configs.len()).filter(|&i| l.configs[i].kind == Kind::Torito).collect();
    let stacks: Vec<Vec<(String, f64)>> = torito
        .iter()
        .map(|&i| {
            let mut segs: Vec<(String, Vec<f64>)> = Vec::new();
            for s in &l.samples[i] {
                for (_, b, d) in segments(s) {
                    let pos = |n: &str| POINTS.iter().position(|p| *p == n).unwrap_or(usize::MAX);
                    if pos(&b) > pos("guest_stopped") {
                        continue;
                    }
                    match segs.iter_mut().find(|(k, _)| *k == b) {
                        Some((_, v)) => v.push(d),
                        None => segs.push((b, vec![d])),
                    }
                }
            }
            let mut out: Vec<(String, f64)> =
                segs.into_iter().map(|(k, v)| (k, summary(&v).map_or(0.0, |s| s.1))).collect();
            // Up to kernel_main when the guest has one.
            if let Some(k) = out.iter().position(|(n, _)| n == "kernel_main") {
                out.truncate(k + 1);
            }
            out
        })
        .collect();
    let ymax = stacks.iter().map(|s| s.iter().map(|x| x.1).sum::<f64>()).fold(0.1, f64::max) / 1000.0 * 1.6;
    let names: Vec<String> =
        torito.iter().map(|&c| l.configs[c].name.trim_start_matches("torito ").to_string()).collect();
    let mut chart = ChartBuilder::on(&left)
        .caption("Torito: exec → kernel_main, median ms by phase", ("sans-serif", 18))
        .margin(14)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d((0..torito.len().max(1) - 1).into_segmented(), 0f64..ymax)
        .map_err(|x| e(&x))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(torito.len())
        .x_label_formatter(&|x| match x {
            SegmentValue::CenterOf(i) => names.get(*i).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .x_label_style(("sans-serif", 11))
        .y_desc("ms since spawn")
        .draw()
        .map_err(|x| e(&x))?;
    let colors = [
        RGBColor(120, 120, 120),
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(23, 190, 207),
    ];
    let color_of = |k: &str| colors[POINTS.iter().position(|p| *p == k).unwrap_or(0).min(colors.len() - 1)];
    let label_of = |k: &str| match k {
        "main" => "exec → main()",
        "kvm_ready" => "ELF check, /dev/kvm",
        "memory_ready" => "VM + RAM",
        "elf_loaded" => "load ELF, page tables",
        "vcpu_ready" => "vCPU, CPUID, registers",
        "first_run" => "→ KVM_RUN",
        "kernel_main" => "enter guest → kernel_main",
        _ => "guest → stop",
    };
    let mut legend_done = std::collections::BTreeSet::new();
    for (x, stack) in stacks.iter().enumerate() {
        let mut y = 0.0;
        for (name, us) in stack {
            let (y0, y1) = (y, y + us / 1000.0);
            y = y1;
            let color = color_of(name);
            let mut bar = Rectangle::new(
                [(SegmentValue::Exact(x), y0), (SegmentValue::Exact(x + 1), y1)],
                color.filled(),
            );
            bar.set_margin(0, 0, 10, 10);
            let series = chart.draw_series(std::iter::once(bar)).map_err(|x| e(&x))?;
            if legend_done.insert(name.clone()) {
                series
                    .label(label_of(name))
                    .legend(move |(a, b)| Rectangle::new([(a, b - 5), (a + 10, b + 5)], color.filled()));
            }
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(|x| e(&x))?;

    // Right: exec → process exit of every configuration (median).
    let whole: Vec<(String, f64)> = l
        .configs
        .iter()
        .zip(&l.samples)
        .map(|(c, s)| {
            let v: Vec<f64> = s.iter().map(|x| x.whole_us).collect();
            (c.name.clone(), summary(&v).map_or(0.0, |m| m.1 / 1000.0))
        })
        .collect();
    let wmax = whole.iter().map(|w| w.1).fold(1.0, f64::max) * 1.15;
    let mut chart = ChartBuilder::on(&right)
        .caption("exec → process exit, median ms", ("sans-serif", 18))
        .margin(14)
        .x_label_area_size(40)
        .y_label_area_size(250)
        .build_cartesian_2d(0f64..wmax, (0..whole.len().max(1) - 1).into_segmented())
        .map_err(|x| e(&x))?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(whole.len())
        .y_label_formatter(&|y| match y {
            SegmentValue::CenterOf(i) => whole.get(*i).map(|w| w.0.clone()).unwrap_or_default(),
            _ => String::new(),
        })
        .x_desc("ms")
        .draw()
        .map_err(|x| e(&x))?;
    chart
        .draw_series(whole.iter().enumerate().map(|(i, (_, ms))| {
            let mut bar = Rectangle::new(
                [(0.0, SegmentValue::Exact(i)), (*ms, SegmentValue::Exact(i + 1))],
                RGBColor(31, 119, 180).filled(),
            );
            bar.set_margin(6, 6, 0, 0);
            bar
        }))
        .map_err(|x| e(&x))?;
    chart
        .draw_series(whole.iter().enumerate().map(|(i, (_, ms))| {
            Text::new(format!("{ms:.1}"), (*ms + wmax * 0.01, SegmentValue::CenterOf(i)), ("sans-serif", 11))
        }))
        .map_err(|x| e(&x))?;
    root.present().map_err(|x| e(&x))?;
    Ok(())
}
