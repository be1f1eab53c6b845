//! The transaction engine end to end on the real databases, one test binary: its edges, its
//! behaviour on PostgreSQL, the errors a caller sees, transactional events, the model-based
//! randomized comparison, the Spring propagation matrix, and test transactions.

mod edges;
mod errors;
mod events;
mod model_based;
mod postgres;
mod recorder;
mod spring_matrix;
mod testing_rollback;
