//! Row predicates for filters: a small SQL-like expression language.
//!
//! `region = 'eu' AND (amount >= 100 OR vip IS NOT NULL) AND kind IN ('a','b')`
//! Operators: `= != <> < <= > >=`, `IS [NOT] NULL`, `[NOT] IN (...)`,
//! `AND`, `OR`, `NOT`, parentheses. Literals: numbers, 'text', NULL, TRUE, FALSE.
//! Comparisons with NULL are false (SQL's unknown, folded to false).

use ferry_core::{TableSchema, Value};

#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Cmp {
        column: String,
        op: CmpOp,
        value: Value,
    },
    IsNull {
        column: String,
        negated: bool,
    },
    In {
        column: String,
        values: Vec<Value>,
        negated: bool,
    },
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Num(String),
    Op(String),
    LParen,
    RParen,
    Comma,
}

fn tokenize(s: &str) -> Result<Vec<Tok>, String> {
    let c: Vec<char> = s.chars().collect();
    let mut i = 0;
    let mut out = Vec::new();
    while i < c.len() {
        let ch = c[i];
        if ch.is_whitespace() {
            i += 1;
        } else if ch == '(' {
            out.push(Tok::LParen);
            i += 1;
        } else if ch == ')' {
            out.push(Tok::RParen);
            i += 1;
        } else if ch == ',' {
            out.push(Tok::Comma);
            i += 1;
        } else if ch == '\'' {
            let mut v = String::new();
            i += 1;
            loop {
                match c.get(i) {
                    None => return Err("unterminated string literal".into()),
                    Some('\'') if c.get(i + 1) == Some(&'\'') => {
                        v.push('\'');
                        i += 2;
                    }
                    Some('\'') => {
                        i += 1;
                        break;
                    }
                    Some(x) => {
                        v.push(*x);
                        i += 1;
                    }
                }
            }
            out.push(Tok::Str(v));
        } else if ch.is_ascii_digit()
            || (ch == '-' && c.get(i + 1).is_some_and(|d| d.is_ascii_digit()))
        {
            let start = i;
            i += 1;
            while i < c.len()
                && (c[i].is_ascii_digit() || c[i] == '.' || c[i] == 'e' || c[i] == 'E')
            {
                i += 1;
            }
            out.push(Tok::Num(c[start..i].iter().collect()));
        } else if ch.is_alphabetic() || ch == '_' || ch == '"' {
            let quoted = ch == '"';
            let start = if quoted { i + 1 } else { i };
            i = start;
            while i < c.len()
                && (if quoted {
                    c[i] != '"'
                } else {
                    c[i].is_alphanumeric() || c[i] == '_'
                })
            {
                i += 1;
            }
            out.push(Tok::Ident(c[start..i].iter().collect()));
            if quoted {
                i += 1;
            }
        } else {
            let two: String = c[i..(i + 2).min(c.len())].iter().collect();
            if ["<=", ">=", "!=", "<>"].contains(&two.as_str()) {
                out.push(Tok::Op(two));
                i += 2;
            } else if "=<>".contains(ch) {
                out.push(Tok::Op(ch.to_string()));
                i += 1;
            } else {
                return Err(format!("unexpected character {ch:?}"));
            }
        }
    }
    Ok(out)
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
}

impl Parser {
    fn peek_kw(&self, kw: &str) -> bool {
        matches!(self.toks.get(self.pos), Some(Tok::Ident(s)) if s.eq_ignore_ascii_case(kw))
    }
    fn eat_kw(&mut self, kw: &str) -> bool {
        let yes = self.peek_kw(kw);
        if yes {
            self.pos += 1;
        }
        yes
    }
    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        t
    }
    fn or(&mut self) -> Result<Expr, String> {
        let mut e = self.and()?;
        while self.eat_kw("or") {
            e = Expr::Or(Box::new(e), Box::new(self.and()?));
        }
        Ok(e)
    }
    fn and(&mut self) -> Result<Expr, String> {
        let mut e = self.unary()?;
        while self.eat_kw("and") {
            e = Expr::And(Box::new(e), Box::new(self.unary()?));
        }
        Ok(e)
    }
    fn unary(&mut self) -> Result<Expr, String> {
        if self.eat_kw("not") {
            return Ok(Expr::Not(Box::new(self.unary()?)));
        }
        if self.toks.get(self.pos) == Some(&Tok::LParen) {
            self.pos += 1;
            let e = self.or()?;
            if self.next() != Some(Tok::RParen) {
                return Err("missing ')'".into());
            }
            return Ok(e);
        }
        let column = match self.next() {
            Some(Tok::Ident(c)) => c,
            other => return Err(format!("expected a column name, found {other:?}")),
        };
        if self.eat_kw("is") {
            let negated = self.eat_kw("not");
            if !self.eat_kw("null") {
                return Err("expected NULL after IS".into());
            }
            return Ok(Expr::IsNull { column, negated });
        }
        let negated = self.eat_kw("not");
        if self.eat_kw("in") {
            if self.next() != Some(Tok::LParen) {
                return Err("expected '(' after IN".into());
            }
            let mut values = vec![self.literal()?];
            loop {
                match self.next() {
                    Some(Tok::Comma) => values.push(self.literal()?),
                    Some(Tok::RParen) => break,
                    other => {
                        return Err(format!("expected ',' or ')' in IN list, found {other:?}"));
                    }
                }
            }
            return Ok(Expr::In {
                column,
                values,
                negated,
            });
        }
        if negated {
            return Err("expected IN after NOT".into());
        }
        let op = match self.next() {
            Some(Tok::Op(o)) => match o.as_str() {
                "=" => CmpOp::Eq,
                "!=" | "<>" => CmpOp::Ne,
                "<" => CmpOp::Lt,
                "<=" => CmpOp::Le,
                ">" => CmpOp::Gt,
                _ => CmpOp::Ge,
            },
            other => {
                return Err(format!(
                    "expected a comparison after {column:?}, found {other:?}"
                ));
            }
        };
        Ok(Expr::Cmp {
            column,
            op,
            value: self.literal()?,
        })
    }
    fn literal(&mut self) -> Result<Value, String> {
        match self.next() {
            Some(Tok::Str(s)) => Ok(Value::Text(s)),
            Some(Tok::Num(n)) => n
                .parse::<i64>()
                .map(Value::Int)
                .or_else(|_| n.parse::<f64>().map(Value::Float))
                .map_err(|_| format!("bad number {n:?}")),
            Some(Tok::Ident(k)) if k.eq_ignore_ascii_case("null") => Ok(Value::Null),
            Some(Tok::Ident(k)) if k.eq_ignore_ascii_case("true") => Ok(Value::Bool(true)),
            Some(Tok::Ident(k)) if k.eq_ignore_ascii_case("false") => Ok(Value::Bool(false)),
            other => Err(format!("expected a literal, found {other:?}")),
        }
    }
}

impl Expr {
    /// Parses an expression; the error says what was expected.
    pub fn parse(s: &str) -> Result<Expr, String> {
        let mut p = Parser {
            toks: tokenize(s)?,
            pos: 0,
        };
        let e = p.or()?;
        if p.pos < p.toks.len() {
            return Err(format!(
                "unexpected {:?} after the expression",
                p.toks[p.pos]
            ));
        }
        Ok(e)
    }

    /// Columns the expression reads.
    pub fn columns(&self) -> Vec<&str> {
        match self {
            Expr::Cmp { column, .. } | Expr::IsNull { column, .. } | Expr::In { column, .. } => {
                vec![column]
            }
            Expr::And(a, b) | Expr::Or(a, b) => [a.columns(), b.columns()].concat(),
            Expr::Not(a) => a.columns(),
        }
    }

    /// Evaluates on a row of `table`. `None` when a column it reads is
    /// [`Value::Unchanged`] (not known from this change).
    pub fn eval(&self, table: &TableSchema, row: &[Value]) -> Option<bool> {
        let get = |c: &str| table.column_index(c).map(|i| &row[i]);
        Some(match self {
            Expr::Cmp { column, op, value } => {
                let v = get(column)?;
                if matches!(v, Value::Unchanged) {
                    return None;
                }
                if v.is_null() || value.is_null() {
                    return Some(false);
                }
                let v = coerce(v, value);
                let ord = v.cmp(value);
                match op {
                    CmpOp::Eq => ord.is_eq(),
                    CmpOp::Ne => ord.is_ne(),
                    CmpOp::Lt => ord.is_lt(),
                    CmpOp::Le => ord.is_le(),
                    CmpOp::Gt => ord.is_gt(),
                    CmpOp::Ge => ord.is_ge(),
                }
            }
            Expr::IsNull { column, negated } => {
                let v = get(column)?;
                if matches!(v, Value::Unchanged) {
                    return None;
                }
                v.is_null() != *negated
            }
            Expr::In {
                column,
                values,
                negated,
            } => {
                let v = get(column)?;
                if matches!(v, Value::Unchanged) {
                    return None;
                }
                !v.is_null() && values.iter().any(|x| coerce(v, x) == *x) != *negated
            }
            Expr::And(a, b) => a.eval(table, row)? && b.eval(table, row)?,
            Expr::Or(a, b) => a.eval(table, row)? || b.eval(table, row)?,
            Expr::Not(a) => !a.eval(table, row)?,
        })
    }
}

/// Brings a row value to the literal's kind where that is natural
/// (decimal text vs number, bool vs 0/1).
fn coerce(v: &Value, literal: &Value) -> Value {
    match (v, literal) {
        (Value::Decimal(s), Value::Int(_) | Value::Float(_)) => s
            .parse::<f64>()
            .map(Value::Float)
            .unwrap_or_else(|_| v.clone()),
        (Value::Bool(b), Value::Int(_)) => Value::Int(*b as i64),
        (Value::Int(i), Value::Bool(_)) => Value::Bool(*i != 0),
        _ => v.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::{Column, ColumnType, TableName};

    fn t() -> TableSchema {
        let col = |n: &str| Column {
            name: n.into(),
            ty: ColumnType::Dynamic,
            nullable: true,
            source_type: String::new(),
            user_type: None,
        };
        TableSchema {
            name: TableName::bare("t"),
            columns: vec![col("id"), col("region"), col("amount")],
            key: vec![0],
            version: 1,
            key_deferrable: false,
        }
    }

    #[test]
    fn evaluates() {
        let e = Expr::parse("region = 'eu' AND (amount >= 100 OR id IN (1, 2))").unwrap();
        let row =
            |r: &str, a: i64, id: i64| vec![Value::Int(id), Value::Text(r.into()), Value::Int(a)];
        assert_eq!(e.eval(&t(), &row("eu", 100, 9)), Some(true));
        assert_eq!(e.eval(&t(), &row("eu", 5, 2)), Some(true));
        assert_eq!(e.eval(&t(), &row("us", 500, 1)), Some(false));
        let e = Expr::parse("NOT amount IS NULL AND region <> 'x'").unwrap();
        assert_eq!(
            e.eval(&t(), &[Value::Int(1), Value::Text("a".into()), Value::Null]),
            Some(false)
        );
    }

    #[test]
    fn errors_say_what_was_expected() {
        assert!(Expr::parse("region = ").unwrap_err().contains("literal"));
        assert!(
            Expr::parse("region = 'x")
                .unwrap_err()
                .contains("unterminated")
        );
        assert!(Expr::parse("(a = 1").unwrap_err().contains(')'));
        assert!(Expr::parse("a = 1 b").is_err());
    }
}
