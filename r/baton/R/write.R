# TOML and JSON, written with base R alone (no jsonlite): strings, numbers and the two
# documents a bundle needs.

# A string quoted for JSON or a TOML basic string (both take the same escapes): backslash
# and quote escaped, control characters as \n, \t, ... or \uXXXX, the rest as UTF-8.
quote_string <- function(x) {
  codes <- utf8ToInt(enc2utf8(x))
  if (anyNA(codes)) stop("string is not valid UTF-8: ", x, call. = FALSE)
  named <- c("8" = "\\b", "9" = "\\t", "10" = "\\n", "12" = "\\f", "13" = "\\r",
             "34" = "\\\"", "92" = "\\\\")
  chars <- vapply(codes, function(cp) {
    key <- as.character(cp)
    if (key %in% names(named)) named[[key]]
    else if (cp < 32 || cp == 127) sprintf("\\u%04X", cp)
    else intToUtf8(cp)
  }, "")
  paste0("\"", paste(chars, collapse = ""), "\"")
}

# Doubles as text that reads back as the same double: the shortest of 15, 16 or 17
# significant digits that does (17 always does), with ".0" on whole numbers so that they
# read as floats. NA stays NA.
format_double <- function(x) {
  out <- sprintf("%.15g", x)
  for (digits in c(16, 17)) {
    redo <- !is.na(x) & suppressWarnings(as.numeric(out)) != x
    redo[is.na(redo)] <- FALSE
    out[redo] <- sprintf(paste0("%.", digits, "g"), x[redo])
  }
  whole <- !grepl("[.eEn]", out)  # n: nan, inf (refused before they get here)
  out[whole] <- paste0(out[whole], ".0")
  out[is.na(x)] <- NA
  out
}

# A column's values as JSON, by the field's type; NA becomes null.
json_values <- function(x, type) {
  out <- switch(type,
                float = format_double(as.numeric(x)),
                integer = as.character(as.integer(x)),
                boolean = ifelse(as.logical(x), "true", "false"),
                string = vapply(as.character(x), function(s) {
                  if (is.na(s)) NA_character_ else quote_string(s)
                }, "", USE.NAMES = FALSE))
  out[is.na(x)] <- "null"
  out
}

# A JSON list of records, one record a line: the fields' columns of the data.frame.
json_records <- function(frame, fields) {
  parts <- lapply(fields, function(f) {
    paste0(quote_string(f$name), ": ", json_values(frame[[f$name]], f$type))
  })
  rows <- do.call(paste, c(parts, sep = ", "))
  paste0("[\n", paste0(" {", rows, "}", collapse = ",\n"), "\n]\n")
}

# The manifest, in the layout docs/manifest.md shows.
manifest_toml <- function(name, version, description, owner, method, pins, inputs,
                          outputs) {
  kv <- function(key, value) paste(key, "=", value)
  s <- quote_string
  lines <- c(
    "[bundle]",
    kv("name", s(name)), kv("version", s(version)),
    kv("description", s(description)), kv("owner", s(owner)),
    "",
    "[model]",
    kv("runner", s("r")), kv("entrypoint", s("builtin:rds")),
    kv("artifact", s("model/model.rds")), kv("method", s(method)),
    "",
    "[environment]",
    kv("r", s(r_version())),
    kv("requirements", toml_array(pins)),
    "",
    "[samples]",
    kv("input", s("samples/input.json")), kv("expected", s("samples/expected.json")),
    kv("tolerance", "1e-06"),
    "",
    "[contract]",
    kv("kind", s("records")), kv("unknown_fields", s("reject")),
    unlist(lapply(inputs, toml_field, table = "contract.inputs")),
    unlist(lapply(outputs, toml_field, table = "contract.outputs")))
  paste0(paste(lines, collapse = "\n"), "\n")
}

# One [[contract.inputs]] or [[contract.outputs]] table, after a blank line.
toml_field <- function(field, table) {
  kv <- function(key, value) paste(key, "=", value)
  c("", paste0("[[", table, "]]"),
    kv("name", quote_string(field$name)),
    kv("type", quote_string(field$type)),
    if (isTRUE(field$nullable)) kv("nullable", "true"),
    if (!is.null(field$min)) kv("min", format_double(field$min)),
    if (!is.null(field$max)) kv("max", format_double(field$max)),
    if (!is.null(field$categories)) kv("categories", toml_array(field$categories)))
}

# A TOML array of strings, one a line ([] when empty).
toml_array <- function(values) {
  if (length(values) == 0) return("[]")
  items <- vapply(values, quote_string, "", USE.NAMES = FALSE)
  paste0("[\n", paste0("    ", items, ",", collapse = "\n"), "\n]")
}

# R's major.minor, e.g. "4.2".
r_version <- function() {
  paste(R.version$major, sub("\\..*$", "", R.version$minor), sep = ".")
}

# Text written as UTF-8 bytes, whatever the session's locale.
write_utf8 <- function(text, file) {
  con <- file(file, open = "wb")
  on.exit(close(con))
  writeBin(charToRaw(enc2utf8(text)), con)
}
