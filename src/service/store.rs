//! C-STORE SCP (PS3.4 Annex B, PS3.7 9.1.1): the request's own checks (the data set arrived
//! whole, the command's UIDs, the presentation context), then `archive::store` under the
//! durability contract; the status is what the SCU is told.

use crate::audit::Subject;
use std::sync::Arc;

use tracing::warn;

use super::Request;
use crate::archive::store::{Received, Store, StoreError};
use crate::dimse::Status;
use crate::net::Dropped;
use crate::storage::Uid;

/// The C-STORE service: the archive's store behind the DIMSE checks.
pub struct StoreService {
    pub archive: Arc<Store>,
}

impl StoreService {
    /// Handle one C-STORE-RQ; the returned status is what the SCU is told.
    pub async fn store(
        &self,
        req: Request<'_>,
        calling_ae: &str,
        dropped: Option<Dropped>,
        subject: &mut Subject,
    ) -> Status {
        let command = req.command;
        match self.try_store(req, calling_ae, dropped, subject).await {
            Ok(()) => Status::success(),
            Err(e) => {
                warn!(
                    sop = command.affected_sop_instance_uid.as_deref().unwrap_or("-"),
                    error = %e,
                    "C-STORE failed"
                );
                super::failure::of_store(&e)
            }
        }
    }

    async fn try_store(
        &self,
        req: Request<'_>,
        calling_ae: &str,
        dropped: Option<Dropped>,
        subject: &mut Subject,
    ) -> Result<(), StoreError> {
        let (context, command, data) = (req.context, req.command, req.data);
        match dropped {
            Some(Dropped::TooLarge { size, limit }) => {
                return Err(StoreError::TooLarge { size, limit });
            }
            Some(Dropped::OverBudget { budget }) => return Err(StoreError::OverBudget { budget }),
            None => {}
        }
        let data = data.ok_or(StoreError::NoDataSet)?;
        let sop_class = command
            .affected_sop_class_uid
            .as_deref()
            .and_then(|u| Uid::parse(u).ok())
            .ok_or(StoreError::BadCommandSopClass)?;
        let sop_instance = command
            .affected_sop_instance_uid
            .as_deref()
            .and_then(|u| Uid::parse(u).ok())
            .ok_or(StoreError::BadCommandSopInstance)?;
        if sop_class.as_str() != context.abstract_syntax {
            return Err(StoreError::ContextMismatch {
                command: sop_class.to_string(),
                context: context.abstract_syntax.clone(),
            });
        }
        let object = Received {
            sop_class,
            sop_instance,
            transfer_syntax: context.transfer_syntax.clone(),
            data,
            source_ae: Some(calling_ae.to_string()).filter(|s| !s.is_empty()),
        };
        self.archive
            .store_received(object, None, subject)
            .await
            .map(|_| ())
    }
}
