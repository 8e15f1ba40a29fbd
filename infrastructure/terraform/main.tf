# Temporal Cloud for the agent platform: one namespace per service, a Nexus endpoint per team that only
# the orchestrator namespace may call, and a namespace-scoped service account with an API key per
# service. Outputs give each service the TEMPORAL_* values its env file needs (deploy/env/cloud/).

locals {
  # Task queues each worker polls; they must match TEMPORAL_TASK_QUEUE in the services' env files.
  task_queues = {
    orchestrator = "orchestrator"
    it           = "it-tools"
    finance      = "finance-tools"
  }
}

# --- Namespaces --------------------------------------------------------------------------------

resource "temporalcloud_namespace" "orchestrator" {
  name           = var.namespace_names.orchestrator
  regions        = [var.region]
  api_key_auth   = true
  retention_days = var.retention_days

  namespace_lifecycle = {
    enable_delete_protection = var.delete_protection
  }
}

resource "temporalcloud_namespace" "it" {
  name           = var.namespace_names.it
  regions        = [var.region]
  api_key_auth   = true
  retention_days = var.retention_days

  namespace_lifecycle = {
    enable_delete_protection = var.delete_protection
  }
}

resource "temporalcloud_namespace" "finance" {
  name           = var.namespace_names.finance
  regions        = [var.region]
  api_key_auth   = true
  retention_days = var.retention_days

  namespace_lifecycle = {
    enable_delete_protection = var.delete_protection
  }
}

# --- Nexus endpoints ---------------------------------------------------------------------------
# Both take namespace ids (<name>.<account>), not names. Only the orchestrator may call them.

resource "temporalcloud_nexus_endpoint" "it" {
  name        = var.nexus_endpoint_names.it
  description = "IT team tools (list_tools, execute_tool). Served by the it_service worker."

  worker_target = {
    namespace_id = temporalcloud_namespace.it.id
    task_queue   = local.task_queues.it
  }

  allowed_caller_namespaces = [temporalcloud_namespace.orchestrator.id]
}

resource "temporalcloud_nexus_endpoint" "finance" {
  name        = var.nexus_endpoint_names.finance
  description = "Finance team tools (list_tools, execute_tool). Served by the finance_service worker."

  worker_target = {
    namespace_id = temporalcloud_namespace.finance.id
    task_queue   = local.task_queues.finance
  }

  allowed_caller_namespaces = [temporalcloud_namespace.orchestrator.id]
}

# --- Service accounts and API keys -------------------------------------------------------------
# One namespace-scoped service account per service: a leaked key reaches one namespace only.
# Workers need write (start workflows, poll task queues); nothing here needs namespace admin.

resource "temporalcloud_service_account" "orchestrator" {
  name        = "${var.namespace_names.orchestrator}-worker"
  description = "Orchestrator worker and agent CLI."

  namespace_scoped_access = {
    namespace_id = temporalcloud_namespace.orchestrator.id
    permission   = "write"
  }
}

resource "temporalcloud_service_account" "it" {
  name        = "${var.namespace_names.it}-worker"
  description = "IT team tool service worker."

  namespace_scoped_access = {
    namespace_id = temporalcloud_namespace.it.id
    permission   = "write"
  }
}

resource "temporalcloud_service_account" "finance" {
  name        = "${var.namespace_names.finance}-worker"
  description = "Finance team tool service worker."

  namespace_scoped_access = {
    namespace_id = temporalcloud_namespace.finance.id
    permission   = "write"
  }
}

# expiry_time forces a new key when it changes; create_before_destroy keeps the old key valid until
# the new one exists, so a rotation is: change api_key_expiry, apply, redeploy workers with the new key.

resource "temporalcloud_apikey" "orchestrator" {
  display_name = "${var.namespace_names.orchestrator}-worker-${formatdate("YYYYMMDD", var.api_key_expiry)}"
  owner_type   = "service-account"
  owner_id     = temporalcloud_service_account.orchestrator.id
  expiry_time  = var.api_key_expiry

  lifecycle {
    create_before_destroy = true
  }
}

resource "temporalcloud_apikey" "it" {
  display_name = "${var.namespace_names.it}-worker-${formatdate("YYYYMMDD", var.api_key_expiry)}"
  owner_type   = "service-account"
  owner_id     = temporalcloud_service_account.it.id
  expiry_time  = var.api_key_expiry

  lifecycle {
    create_before_destroy = true
  }
}

resource "temporalcloud_apikey" "finance" {
  display_name = "${var.namespace_names.finance}-worker-${formatdate("YYYYMMDD", var.api_key_expiry)}"
  owner_type   = "service-account"
  owner_id     = temporalcloud_service_account.finance.id
  expiry_time  = var.api_key_expiry

  lifecycle {
    create_before_destroy = true
  }
}
