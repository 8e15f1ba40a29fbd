terraform {
  # optional() object attributes and the validation functions used here need 1.5+.
  required_version = ">= 1.5.0"

  required_providers {
    temporalcloud = {
      source = "temporalio/temporalcloud"
      # Pinned exactly: attribute names (namespace_scoped_access, endpoints.grpc_address,
      # namespace_lifecycle) were checked against this release's schema. Bump deliberately.
      version = "1.5.0"
    }
  }
}

# Credentials come from the environment (TEMPORAL_CLOUD_API_KEY), never from a file in this folder.
provider "temporalcloud" {
  allowed_account_id = var.account_id
}
