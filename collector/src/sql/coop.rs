//! A physical-plan rule that makes every operator's output spend the task's scheduling
//! budget, so a query yields to its runtime every few batches wherever it is busy.
//!
//! DataFusion already does this at scans; but a join can produce billions of rows from
//! inputs it has long finished reading, and the operator above it would then never
//! yield. With this rule the query's time limit can abort it at any point.

use std::sync::Arc;

use datafusion::{
    common::tree_node::{Transformed, TreeNode},
    config::ConfigOptions,
    error::Result,
    physical_optimizer::PhysicalOptimizerRule,
    physical_plan::{ExecutionPlan, coop::CooperativeExec},
};

/// Wraps every operator with children in a [`CooperativeExec`].
#[derive(Debug, Default)]
pub struct YieldEverywhere;

impl PhysicalOptimizerRule for YieldEverywhere {
    fn optimize(&self, plan: Arc<dyn ExecutionPlan>, _config: &ConfigOptions) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            let wrapped = node.name() == "CooperativeExec";
            if node.children().is_empty() || wrapped {
                return Ok(Transformed::no(node));
            }
            Ok(Transformed::yes(Arc::new(CooperativeExec::new(node)) as Arc<dyn ExecutionPlan>))
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "meshlens_yield_everywhere"
    }

    fn schema_check(&self) -> bool {
        true
    }
}
