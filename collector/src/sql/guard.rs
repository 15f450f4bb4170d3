//! What a query may do: one read-only statement, over our tables only, without functions
//! that build unbounded values. Checked on the parsed statement and again on the plan.

use datafusion::{
    common::{
        TableReference,
        tree_node::{TreeNode, TreeNodeRecursion},
    },
    execution::context::SQLOptions,
    logical_expr::{Expr, LogicalPlan},
    sql::{parser::Statement, sqlparser::ast},
};

use super::{SqlError, TABLE_NAMES};

/// Functions refused because one call can allocate gigabytes.
const DENIED_FUNCTIONS: &[&str] = &["repeat", "lpad", "rpad"];

fn rejected(what: impl std::fmt::Display) -> SqlError {
    SqlError::Rejected(format!(
        "only read-only queries are allowed (SELECT, WITH, VALUES, EXPLAIN); {what} is rejected"
    ))
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
