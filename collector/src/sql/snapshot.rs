//! The `spans` and `logs` tables as DataFusion reads them: a snapshot of their batches in
//! which only the columns a query names are unpacked from their compact storage (a query
//! that never reads `attributes` never decompresses it). When it reads none of the compressed
//! columns, the scan shares the stored arrays (widening 16-bit dictionary keys) and tells the planner its exact row counts,
//! as an in-memory table does; when it does, the batches are unpacked one at a time as the
//! query consumes them, so memory stays bounded whatever the table holds. The parts are
//! split into as many runs of neighbouring parts as the query has partitions, scanned side by
//! side.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::{
    arrow::datatypes::SchemaRef,
    catalog::{Session, TableProvider, memory::MemorySourceConfig},
    error::{DataFusionError, Result},
    execution::{SendableRecordBatchStream, TaskContext},
    logical_expr::{Expr, TableType},
    physical_plan::{
        ExecutionPlan,
        stream::RecordBatchStreamAdapter,
        streaming::{PartitionStream, StreamingTableExec},
    },
};

use crate::tables::{
    Sealed,
    schema::{self, Column},
};

/// A table snapshot DataFusion can scan.
#[derive(Debug)]
pub struct SnapshotTable {
    columns: &'static [Column],
    schema: SchemaRef,
    parts: Arc<[Sealed]>,
}

impl SnapshotTable {
    /// The table of these columns holding these parts.
    pub fn new(columns: &'static [Column], parts: Vec<Sealed>) -> Self {
        Self { columns, schema: schema::schema(columns), parts: parts.into() }
    }
}

#[async_trait]
impl TableProvider for SnapshotTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let schema = match projection {
            Some(p) => Arc::new(self.schema.project(p)?),
            None => self.schema.clone(),
        };
        let ranges = partitions(self.parts.len(), state.config().target_partitions());
        if let Some(p) = projection
            && p.iter().all(|&i| self.columns.get(i).is_some_and(|c| c.storage.is_cheap()))
        {
            let batches = ranges
                .map(|r| self.parts[r].iter().map(|part| part.project(Some(p))).collect::<Result<Vec<_>, _>>())
                .collect::<Result<Vec<_>, _>>()?;
            return Ok(MemorySourceConfig::try_new_exec(&batches, schema, None)?);
        }
        let streams = ranges
            .map(|range| {
                let stream = PartStream { schema: schema.clone(), parts: self.parts.clone(), range, projection: projection.cloned() };
                Arc::new(stream) as Arc<dyn PartitionStream>
            })
            .collect();
        Ok(Arc::new(StreamingTableExec::try_new(schema, streams, None, [], false, limit)?))
    }
}

/// `parts` split into at most `n` runs of neighbouring parts (one run when there are none, so
/// a scan always has a partition), the longer runs first.
fn partitions(parts: usize, n: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    let n = n.clamp(1, parts.max(1));
    let (each, longer) = (parts / n, parts % n);
    (0..n).map(move |i| {
        let start = i * each + i.min(longer);
        start..start + each + usize::from(i < longer)
    })
}

/// A run of the parts, in order, each projected when the stream reaches it.
#[derive(Debug)]
struct PartStream {
    schema: SchemaRef,
    parts: Arc<[Sealed]>,
    range: std::ops::Range<usize>,
    projection: Option<Vec<usize>>,
}

impl PartitionStream for PartStream {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let (parts, projection) = (self.parts.clone(), self.projection.clone());
        let batches = self.range.clone().map(move |i| parts[i].project(projection.as_deref()).map_err(DataFusionError::from));
        Box::pin(RecordBatchStreamAdapter::new(self.schema.clone(), futures_util::stream::iter(batches)))
    }
}

#[cfg(test)]
mod tests {
    use super::partitions;

    #[test]
    fn parts_split_into_neighbouring_runs() {
        let runs = |parts, n| partitions(parts, n).map(|r| (r.start, r.end)).collect::<Vec<_>>();
        assert_eq!(runs(7, 3), [(0, 3), (3, 5), (5, 7)]);
        assert_eq!(runs(2, 4), [(0, 1), (1, 2)]);
        assert_eq!(runs(0, 2), [(0, 0)]);
        assert_eq!(runs(5, 1), [(0, 5)]);
        assert_eq!(runs(4, 0), [(0, 4)]);
    }
}
