//! A small emulation of Go's `text/tabwriter` as `stolonctl status` configures it
//! (`minwidth 0, tabwidth 8, padding 1, padchar '\t'`), so the tables line up exactly as Stolon's.
//!
//! Pure. Lines are buffered until [`TabWriter::flush`]; a flush aligns the buffered lines as one
//! block. Cells are tab-terminated: the text after a line's last tab is not a cell.

const TAB_WIDTH: usize = 8;
const PADDING: usize = 1;

/// Buffers lines and aligns their tab-separated cells on flush.
#[derive(Debug, Default)]
pub struct TabWriter {
    lines: Vec<Vec<String>>,
    out: String,
}

impl TabWriter {
    /// An empty writer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Buffers one line (without its newline).
    pub fn line(&mut self, text: &str) {
        self.lines
            .push(text.split('\t').map(str::to_string).collect());
    }

    /// Aligns and emits the buffered lines as one block.
    pub fn flush(&mut self) {
        let lines = std::mem::take(&mut self.lines);
        let mut widths = Vec::new();
        format(&lines, &mut widths, 0, lines.len(), &mut self.out);
    }

    /// Flushes and returns everything written.
    pub fn finish(mut self) -> String {
        self.flush();
        self.out
    }
}

fn width(s: &str) -> usize {
    s.chars().count()
}

/// Number of tab-terminated cells of a line.
fn cells(line: &[String]) -> usize {
    line.len().saturating_sub(1)
}

fn format(
    lines: &[Vec<String>],
    widths: &mut Vec<usize>,
    mut line0: usize,
    line1: usize,
    out: &mut String,
) {
    let column = widths.len();
    let mut this = line0;
    while this < line1 {
        if column >= cells(&lines[this]) {
            this += 1;
            continue;
        }
        write_lines(lines, widths, line0, this, out);
        line0 = this;
        let mut w = 0;
        while this < line1 && column < cells(&lines[this]) {
            w = w.max(width(&lines[this][column]) + PADDING);
            this += 1;
        }
        widths.push(w);
        format(lines, widths, line0, this, out);
        widths.pop();
        line0 = this;
    }
    write_lines(lines, widths, line0, line1, out);
}

fn write_lines(
    lines: &[Vec<String>],
    widths: &[usize],
    line0: usize,
    line1: usize,
    out: &mut String,
) {
    for line in &lines[line0..line1] {
        for (j, cell) in line.iter().enumerate() {
            out.push_str(cell);
            if j < widths.len() && j < cells(line) {
                let cellw = widths[j].div_ceil(TAB_WIDTH) * TAB_WIDTH;
                let n = cellw.saturating_sub(width(cell));
                out.push_str(&"\t".repeat(n.div_ceil(TAB_WIDTH)));
            }
        }
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pads_cells_to_tab_stops() {
        let mut tw = TabWriter::new();
        tw.line("ID\tLEADER");
        tw.line("2051827f\ttrue");
        tw.flush();
        tw.line("aa\tfalse");
        tw.flush();
        // Width of column 0 in the first block: 8+1 -> 16: "ID" + 2 tabs, uid + 1 tab. The
        // second block is aligned on its own: "aa" (3 -> 8) + 1 tab.
        assert_eq!(tw.finish(), "ID\t\tLEADER\n2051827f\ttrue\naa\tfalse\n");
    }

    #[test]
    fn trailing_cells_and_empty_cells() {
        let mut tw = TabWriter::new();
        tw.line("UID\tHEALTHY\tPG");
        tw.line("keeper0\ttrue\t10.0.0.1:5432\t");
        tw.line("k1\tfalse\t(no db assigned)\t\t");
        let out = tw.finish();
        assert_eq!(
            out,
            "UID\tHEALTHY\tPG\nkeeper0\ttrue\t10.0.0.1:5432\t\t\nk1\tfalse\t(no db assigned)\t\t\n"
        );
    }

    #[test]
    fn lines_without_cells_pass_through() {
        let mut tw = TabWriter::new();
        tw.line("ID");
        tw.line("fc6b8f04");
        assert_eq!(tw.finish(), "ID\nfc6b8f04\n");
    }
}
