variable "account_id" {
  description = "Temporal Cloud account id this configuration may change (a guard against applying to the wrong account). null disables the guard."
  type        = string
  default     = null

  validation {
    condition     = var.account_id == null || can(regex("^[a-z0-9]+$", var.account_id))
    error_message = "account_id must be the lower-case alphanumeric account id shown in the Temporal Cloud UI, or null."
  }
}

variable "region" {
  description = "Temporal Cloud region of all three namespaces, prefixed with the cloud provider, e.g. aws-us-east-1 or gcp-us-central1."
  type        = string

  validation {
    condition     = can(regex("^(aws|gcp)-[a-z0-9-]+[0-9]$", var.region))
    error_message = "region must be a Temporal Cloud region id such as aws-us-east-1 or gcp-us-central1 (cloud provider prefix included)."
  }
}

variable "namespace_names" {
  description = "Names of the three namespaces. Temporal Cloud appends the account id to form each namespace id (<name>.<account>). Names are unique per account: prefix them per environment (e.g. prod-orchestrator)."
  type = object({
    orchestrator = string
    it           = string
    finance      = string
  })
  default = {
    orchestrator = "orchestrator"
    it           = "it"
    finance      = "finance"
  }

  validation {
    condition     = alltrue([for name in values(var.namespace_names) : can(regex("^[a-z][a-z0-9-]*[a-z0-9]$", name))])
    error_message = "Namespace names must start with a lower-case letter, contain only lower-case letters, digits and hyphens, and end with a letter or digit."
  }

  validation {
    condition     = alltrue([for name in values(var.namespace_names) : length(name) >= 2 && length(name) <= 39])
    error_message = "Namespace names must be 2 to 39 characters long."
  }

  validation {
    condition     = length(distinct(values(var.namespace_names))) == 3
    error_message = "The three namespace names must differ."
  }
}

variable "nexus_endpoint_names" {
  description = "Nexus endpoint names, unique per account. The orchestrator knows only these names (ORCHESTRATOR_TOOL_ENDPOINTS)."
  type = object({
    it      = string
    finance = string
  })
  default = {
    it      = "it-tools"
    finance = "finance-tools"
  }

  validation {
    # Temporal Cloud's endpoint name rule: letters, digits and hyphens only. No underscores.
    condition     = alltrue([for name in values(var.nexus_endpoint_names) : can(regex("^[a-zA-Z][a-zA-Z0-9-]*[a-zA-Z0-9]$", name))])
    error_message = "Nexus endpoint names must start with a letter, contain only letters, digits and hyphens (no underscores), and end with a letter or digit."
  }

  validation {
    condition     = length(distinct(values(var.nexus_endpoint_names))) == 2
    error_message = "The two Nexus endpoint names must differ."
  }
}

variable "retention_days" {
  description = "Days Temporal Cloud keeps closed workflow histories, for all three namespaces."
  type        = number
  default     = 7

  validation {
    condition     = var.retention_days >= 1 && var.retention_days <= 90 && floor(var.retention_days) == var.retention_days
    error_message = "retention_days must be a whole number of days from 1 to 90."
  }
}

variable "delete_protection" {
  description = "Turn on Temporal Cloud delete protection for the namespaces. Set to false (and apply) before `terraform destroy`."
  type        = bool
  default     = true
}

variable "api_key_expiry" {
  description = "Expiry of the three worker API keys, an RFC 3339 timestamp such as 2027-06-30T00:00:00Z. A fixed value, so plans are stable; change it to rotate the keys (new keys are created before the old ones are destroyed)."
  type        = string

  validation {
    # formatdate accepts only RFC 3339 timestamps, so this rejects anything else (including 2027-13-01).
    condition     = can(formatdate("YYYY-MM-DD", var.api_key_expiry))
    error_message = "api_key_expiry must be an RFC 3339 timestamp, e.g. 2027-06-30T00:00:00Z."
  }
}
