"""Business rules as plain functions. They take the acting user as an argument and never
touch request or current_user, so views, jobs and the CLI can all call them."""
