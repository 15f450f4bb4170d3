//! What a query may do: one read-only statement, over our tables only, without functions
//! that build unbounded values, and of a bounded size. Checked on its tokens, on the parsed
//! statement and again on the plan.

use datafusion::{
    common::{
        TableReference,
        tree_node::{TreeNode, TreeNodeRecursion},
    },
    execution::context::SQLOptions,
    logical_expr::{Expr, LogicalPlan},
    sql::{
        parser::Statement,
        sqlparser::{
            ast,
            dialect::GenericDialect,
            keywords::Keyword,
            tokenizer::{Token, Tokenizer},
        },
    },
};

use super::{SqlError, TABLE_NAMES};

/// Functions refused because one call can allocate gigabytes.
const DENIED_FUNCTIONS: &[&str] = &["repeat", "lpad", "rpad"];

fn rejected(what: impl std::fmt::Display) -> SqlError {
    SqlError::Rejected(format!(
        "only read-only queries are allowed (SELECT, WITH, VALUES, EXPLAIN); {what} is rejected"
    ))
}

/// The most operators, keywords and brackets a query may hold. A chain of binary operators
/// (`a = 1 OR a = 2 OR …`) parses into a tree as deep as the chain is long, and DataFusion
/// walks and clones its expressions recursively: a chain of 2,000 overflowed a query
/// thread's stack and aborted the whole collector. With this bound a tree stays within a
/// depth the query threads' stack ([`super::QUERY_STACK`]) holds; lists (`IN (…)`, a
/// `SELECT` list) are flat and their items are not counted.
pub const MAX_OPERATORS: usize = 1_000;

/// The query must hold at most [`MAX_OPERATORS`] tokens that are not literals, plain
/// identifiers, commas or whitespace. Tokenizing is a loop, so this holds for any text.
pub fn bounded(sql: &str) -> Result<(), SqlError> {
    // A text that does not tokenize is left to the parser, which says why.
    let Ok(tokens) = Tokenizer::new(&GenericDialect {}, sql).tokenize() else { return Ok(()) };
    let operators = tokens.iter().filter(|t| counts(t)).count();
    if operators > MAX_OPERATORS {
        return Err(SqlError::Rejected(format!(
            "the query is too large: {operators} operators, keywords and brackets, at most {MAX_OPERATORS} \
             (long chains of AND, OR or arithmetic nest too deeply; a list such as IN ('a', 'b', …) is not counted)"
        )));
    }
    Ok(())
}

/// Whether a token can make a node with children: anything but a literal, a plain
/// identifier, a comma or whitespace.
fn counts(token: &Token) -> bool {
    !matches!(
        token,
        Token::Whitespace(_)
            | Token::Comma
            | Token::EOF
            | Token::Number(..)
            | Token::SingleQuotedString(_)
            | Token::DoubleQuotedString(_)
            | Token::NationalStringLiteral(_)
            | Token::EscapedStringLiteral(_)
            | Token::UnicodeStringLiteral(_)
            | Token::HexStringLiteral(_)
    ) && !matches!(token, Token::Word(w) if w.keyword == Keyword::NoKeyword)
}

/// The statement must be a query, or an `EXPLAIN` of one.
pub fn only_queries(statement: &Statement) -> Result<(), SqlError> {
    match statement {
        Statement::Statement(s) => sql_statement(s),
        Statement::Explain(e) => only_queries(&e.statement),
        Statement::CreateExternalTable(_) => Err(rejected("CREATE EXTERNAL TABLE")),
        Statement::CopyTo(_) => Err(rejected("COPY")),
        Statement::Reset(_) => Err(rejected("RESET")),
    }
}

fn sql_statement(statement: &ast::Statement) -> Result<(), SqlError> {
    match statement {
        ast::Statement::Query(_) => Ok(()),
        ast::Statement::Explain { statement, .. } => sql_statement(statement),
        other => {
            let text = other.to_string();
            let verb: String = text.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
            Err(rejected(format!("`{verb} …`")))
        }
    }
}

/// The tables of ours a query names (to load); anything else but `information_schema`
/// is an error.
pub fn tables(references: &[TableReference]) -> Result<Vec<&'static str>, SqlError> {
    let mut out = Vec::new();
    for reference in references {
        let schema = reference.schema();
        if schema == Some("information_schema") {
            continue;
        }
        let ours = TABLE_NAMES.iter().find(|t| **t == reference.table());
        let qualified_ok = schema.is_none_or(|s| s == "public") && reference.catalog().is_none_or(|c| c == "meshlens");
        match ours {
            Some(name) if qualified_ok => {
                if !out.contains(name) {
                    out.push(*name);
                }
            }
            _ => {
                return Err(SqlError::Rejected(format!(
                    "unknown table '{reference}': the tables are {} (and information_schema)",
                    TABLE_NAMES.join(", ")
                )));
            }
        }
    }
    Ok(out)
}

/// The plan must not define or modify anything, set options, or call a denied function.
pub fn plan(plan: &LogicalPlan) -> Result<(), SqlError> {
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
        .verify_plan(plan)
        .map_err(|e| rejected(e.message()))?;
    let mut denied: Option<String> = None;
    plan.apply_with_subqueries(|node| {
        node.apply_expressions(|expr| {
            expr.apply(|e| {
                if let Expr::ScalarFunction(f) = e
                    && DENIED_FUNCTIONS.contains(&f.name()) {
                        denied = Some(f.name().to_owned());
                        return Ok(TreeNodeRecursion::Stop);
                    }
                Ok(TreeNodeRecursion::Continue)
            })
        })
    })?;
    match denied {
        Some(name) => Err(SqlError::Rejected(format!("function {name}() is disabled on this collector"))),
        None => Ok(()),
    }
}
