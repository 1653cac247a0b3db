//! The printed report: one table, figures side by side.

use std::fmt::Write as _;
use std::time::Duration;

/// One line of the table.
#[derive(Debug, Clone, Default)]
pub struct Row {
    pub workload: String,
    pub workers: String,
    pub tasks_per_second: Option<f64>,
    pub p50: Option<Duration>,
    pub p99: Option<Duration>,
    /// Our figure over apalis-redis' for the same workload and worker count.
    pub baseline_ratio: Option<f64>,
    /// tasks/s over what Redis runs of one small script per second, pipelined.
    pub ceiling_ratio: Option<f64>,
}

impl Row {
    pub fn new(workload: impl Into<String>, workers: impl Into<String>) -> Self {
        Self {
            workload: workload.into(),
            workers: workers.into(),
            ..Self::default()
        }
    }

    pub fn rate(mut self, tasks_per_second: f64) -> Self {
        self.tasks_per_second = Some(tasks_per_second);
        self
    }

    pub fn latency(mut self, p50: Option<Duration>, p99: Option<Duration>) -> Self {
        self.p50 = p50;
        self.p99 = p99;
        self
    }
}

/// A right-aligned table with a header rule; `-` where a figure does not apply.
pub fn render(rows: &[Row]) -> String {
    let header = [
        "workload",
        "workers",
        "tasks/s",
        "p50",
        "p99",
        "vs apalis-redis",
        "vs redis ceiling",
    ];
    let cells: Vec<[String; 7]> = rows
        .iter()
        .map(|row| {
            [
                row.workload.clone(),
                row.workers.clone(),
                row.tasks_per_second
                    .map(|rate| format!("{rate:.0}"))
                    .unwrap_or_else(dash),
                row.p50.map(millis).unwrap_or_else(dash),
                row.p99.map(millis).unwrap_or_else(dash),
                row.baseline_ratio
                    .map(|ratio| format!("{ratio:.2}x"))
                    .unwrap_or_else(dash),
                row.ceiling_ratio
                    .map(|ratio| format!("{ratio:.2}"))
                    .unwrap_or_else(dash),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for line in &cells {
        for (width, cell) in widths.iter_mut().zip(line) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let format_line = |out: &mut String, line: &[String]| {
        for (column, (cell, width)) in line.iter().zip(widths).enumerate() {
            let separator = if column == 0 { "" } else { " | " };
            // The first two columns are words, the rest numbers.
            if column < 2 {
                let _ = write!(out, "{separator}{cell:<width$}");
            } else {
                let _ = write!(out, "{separator}{cell:>width$}");
            }
        }
        out.push('\n');
    };
    format_line(&mut out, &header.map(str::to_owned));
    let rule: Vec<String> = widths.iter().map(|width| "-".repeat(*width)).collect();
    format_line(&mut out, &rule);
    for line in &cells {
        format_line(&mut out, line);
    }
    out
}

fn dash() -> String {
    "-".to_owned()
}

fn millis(duration: Duration) -> String {
    format!("{:.2} ms", duration.as_secs_f64() * 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_has_a_header_a_rule_and_one_line_per_row() {
        let rows = vec![
            Row::new("queue drain", "4").rate(12345.6),
            Row::new("queue pick-up", "1").latency(Some(Duration::from_micros(1500)), None),
        ];
        let table = render(&rows);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines[0].starts_with("workload"));
        assert!(lines[2].contains("12346"));
        assert!(lines[3].contains("1.50 ms"));
    }
}
