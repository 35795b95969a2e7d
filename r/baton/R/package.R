# baton_package(): a fitted R model, a sample of its inputs and the packages it needs,
# written as a Baton bundle (docs/manifest.md) that the engine's R runner serves:
#
#   PATH/baton.toml             the manifest
#   PATH/model/model.rds        the model (saveRDS)
#   PATH/samples/input.json     the sample's records
#   PATH/samples/expected.json  what the model returned for them
#
# The runner loads the model with readRDS(), builds a data.frame from each request's
# records by the contract alone (contract.R says how) and calls predict() on it. The
# expected outputs are computed here the same way, from a data.frame rebuilt from the
# contract rather than from the sample itself, so that the bundle's sample check compares
# like with like.

# Exported (NAMESPACE); documented in man/baton_package.Rd.
baton_package <- function(model, sample, name, version = "1.0.0", path = name,
                          description = "", owner = "", method = NULL,
                          packages = NULL) {
  # Everything is checked and computed before anything is written: a refusal leaves no
  # half-written folder behind.
  check_identity(name, version, description, owner)
  check_folder(path)
  inputs <- infer_inputs(sample, model)
  frame <- rebuild_frame(sample, inputs)
  method <- choose_method(model, frame, method)
  predicted <- predict_outputs(model, frame, method)
  pins <- pin_packages(model, packages)

  dir.create(file.path(path, "model"), recursive = TRUE, showWarnings = FALSE)
  dir.create(file.path(path, "samples"), showWarnings = FALSE)
  saveRDS(model, file.path(path, "model", "model.rds"))
  # The sample as the runner will see it: the rebuilt frame's values, not the original's.
  write_utf8(json_records(frame, inputs), file.path(path, "samples", "input.json"))
  write_utf8(json_records(predicted$values, predicted$fields),
             file.path(path, "samples", "expected.json"))
  write_utf8(manifest_toml(name = name, version = version, description = description,
                           owner = owner, method = method, pins = pins,
                           inputs = inputs, outputs = predicted$fields),
             file.path(path, "baton.toml"))

  print_summary(name, version, path, method, nrow(frame), inputs, predicted, pins)
  invisible(path)
}

# The [bundle] identity, by the same rules as the engine's manifest parser.
check_identity <- function(name, version, description, owner) {
  if (!is_string(name) || !grepl("^[a-z0-9][a-z0-9._-]{0,63}$", name)) {
    stop("invalid bundle name ", shown(name), ": a bundle name is lower-case letters, ",
         "digits, '.', '_' or '-', starting with a letter or digit, at most 64 characters",
         call. = FALSE)
  }
  if (!is_string(version) || !grepl("^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$", version)) {
    stop("invalid bundle version ", shown(version), ": letters, digits, '.', '_', '+' or ",
         "'-', starting with a letter or digit, at most 64 characters", call. = FALSE)
  }
  if (!is_string(description) || !is_string(owner)) {
    stop("description and owner must each be one character string", call. = FALSE)
  }
}

# The bundle is written into a new or empty folder only: never over someone's files.
check_folder <- function(path) {
  if (!is_string(path) || !nzchar(path)) {
    stop("path must be one non-empty character string", call. = FALSE)
  }
  if (file.exists(path) && !dir.exists(path)) {
    stop("cannot write the bundle to '", path, "': it exists and is not a folder",
         call. = FALSE)
  }
  if (dir.exists(path) && length(list.files(path, all.files = TRUE, no.. = TRUE)) > 0) {
    stop("cannot write the bundle to '", path, "': the folder exists and is not empty ",
         "(choose a new path, or remove the folder first)", call. = FALSE)
  }
}

# A short account of what was written, for the console.
print_summary <- function(name, version, path, method, rows, inputs, predicted, pins) {
  describe <- function(fields) {
    paste(vapply(fields, function(f) {
      extra <- c(if (isTRUE(f$nullable)) "nullable",
                 if (!is.null(f$categories)) paste(f$categories, collapse = "|"))
      paste0(f$name, " (", paste(c(f$type, extra), collapse = ", "), ")")
    }, ""), collapse = ", ")
  }
  cat(sprintf("baton bundle '%s' %s written to %s\n", name, version, path))
  cat("  inputs:  ", describe(inputs), "\n", sep = "")
  cat("  outputs: ", describe(predicted$fields), "\n", sep = "")
  cat(sprintf("  method:  %s; %d sample record%s\n", method, rows, if (rows == 1) "" else "s"))
  cat("  pins:    ", if (length(pins)) paste(pins, collapse = ", ") else "(none)", "\n",
      sep = "")
  if (predicted$missing > 0) {
    cat(sprintf(paste0("  note:    the model returned NA for %d sample record%s; its ",
                       "outputs are marked nullable\n"),
                predicted$missing, if (predicted$missing == 1) "" else "s"))
  }
}

is_string <- function(x) is.character(x) && length(x) == 1 && !is.na(x)

# A value as an error message shows it.
shown <- function(x) {
  if (is_string(x)) paste0("'", x, "'") else paste(deparse(x), collapse = " ")
}
