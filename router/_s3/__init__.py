"""S3 and KMS in each region: clients, error mapping, health, verification, objects, bulk ops."""
