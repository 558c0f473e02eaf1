//! A YAML tree that remembers where every node starts, built from
//! yaml-rust2's event stream (serde_yaml keeps no positions past a parse
//! error). Anchors, aliases and tags are refused: policies do not need them,
//! and refusing aliases rules out exponential expansion.
use yaml_rust2::{
    parser::{Event, Parser},
    scanner::{Marker, TScalarStyle},
};

use super::diagnostic::Pos;

/// Deeper nesting than any policy needs; a bound keeps decoding (which
/// recurses) off the end of the stack whatever the input.
const MAX_DEPTH: usize = 48;

#[derive(Debug, Clone)]
pub struct Node {
    pub pos: Pos,
    pub kind: NodeKind,
}

#[derive(Debug, Clone)]
pub enum NodeKind {
    Scalar { value: String, plain: bool },
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

impl Node {
    /// A plain `~`, `null` or empty scalar.
    pub fn is_null(&self) -> bool {
        matches!(&self.kind, NodeKind::Scalar { value, plain: true }
            if value.is_empty() || value == "~" || value == "null" || value == "Null" || value == "NULL")
    }

    pub fn describe(&self) -> &'static str {
        match &self.kind {
            _ if self.is_null() => "nothing",
            NodeKind::Scalar { .. } => "a scalar",
            NodeKind::Seq(_) => "a list",
            NodeKind::Map(_) => "a mapping",
        }
    }
}

fn pos(m: &Marker) -> Pos {
    Pos {
        line: u32::try_from(m.line()).unwrap_or(u32::MAX),
        col: u32::try_from(m.col() + 1).unwrap_or(u32::MAX),
    }
}

enum Frame {
    Seq(Pos, Vec<Node>),
    Map(Pos, Vec<(Node, Node)>, Option<Node>),
}

/// Every document of a YAML stream; empty documents are left out.
pub fn parse(src: &str) -> Result<Vec<Node>, (Pos, String)> {
    let mut parser = Parser::new_from_str(src);
    let mut docs = Vec::new();
    let mut stack: Vec<Frame> = Vec::new();
    loop {
        let (ev, mark) = parser
            .next_token()
            .map_err(|e| (pos(e.marker()), e.info().to_owned()))?;
        let at = pos(&mark);
        let done = match ev {
            Event::StreamEnd => return Ok(docs),
            Event::Nothing | Event::StreamStart | Event::DocumentStart | Event::DocumentEnd => {
                continue;
            }
            Event::Alias(_) => return Err((at, "aliases are not supported".into())),
            Event::Scalar(_, _, anchor, tag)
            | Event::SequenceStart(anchor, tag)
            | Event::MappingStart(anchor, tag)
                if anchor != 0 || tag.is_some() =>
            {
                let what = if anchor != 0 { "anchors" } else { "tags" };
                return Err((at, format!("{what} are not supported")));
            }
            Event::Scalar(value, style, _, _) => Node {
                pos: at,
                kind: NodeKind::Scalar {
                    value,
                    plain: style == TScalarStyle::Plain,
                },
            },
            Event::SequenceStart(..) | Event::MappingStart(..) => {
                if stack.len() >= MAX_DEPTH {
                    return Err((at, format!("nested deeper than {MAX_DEPTH} levels")));
                }
                stack.push(if matches!(ev, Event::SequenceStart(..)) {
                    Frame::Seq(at, Vec::new())
                } else {
                    Frame::Map(at, Vec::new(), None)
                });
                continue;
            }
            Event::SequenceEnd | Event::MappingEnd => match stack.pop() {
                Some(Frame::Seq(p, items)) => Node {
                    pos: p,
                    kind: NodeKind::Seq(items),
                },
                // yaml-rust2 marks a block mapping where its first `:` is;
                // its first key is where a reader looks.
                Some(Frame::Map(p, entries, None)) => Node {
                    pos: entries.first().map_or(p, |(k, _)| k.pos),
                    kind: NodeKind::Map(entries),
                },
                _ => return Err((at, "unbalanced YAML structure".into())),
            },
        };
        match stack.last_mut() {
            None => {
                if !done.is_null() {
                    docs.push(done);
                }
            }
            Some(Frame::Seq(_, items)) => items.push(done),
            Some(Frame::Map(_, _, key @ None)) => *key = Some(done),
            Some(Frame::Map(_, entries, key @ Some(_))) => {
                if let Some(k) = key.take() {
                    entries.push((k, done));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based_line_and_column() {
        let docs = parse("a: 1\nb:\n  - x\n---\nc: [y]\n").unwrap();
        assert_eq!(docs.len(), 2);
        let NodeKind::Map(m) = &docs[0].kind else {
            panic!("not a map")
        };
        assert_eq!(m[0].0.pos, Pos { line: 1, col: 1 });
        assert_eq!(m[0].1.pos, Pos { line: 1, col: 4 });
        let NodeKind::Seq(s) = &m[1].1.kind else {
            panic!("not a seq")
        };
        assert_eq!(s[0].pos, Pos { line: 3, col: 5 });
    }

    #[test]
    fn refuses_aliases_anchors_tags_and_deep_nesting() {
        assert!(parse("a: &x 1\nb: *x\n").unwrap_err().1.contains("anchors"));
        assert!(parse("a: !!str 1\n").unwrap_err().1.contains("tags"));
        let deep = "[".repeat(200) + &"]".repeat(200);
        assert!(parse(&deep).unwrap_err().1.contains("deeper"));
    }

    #[test]
    fn syntax_errors_have_positions() {
        let (p, _) = parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(p.line >= 1);
        assert!(parse("").unwrap().is_empty());
        assert!(parse("---\n---\n").unwrap().is_empty());
    }
}
