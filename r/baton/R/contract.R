# The contract: the inputs inferred from the sample's columns, the data.frame the runner
# builds from them, and the outputs of the model's predict().
#
# A field is a list: name, type ("float", "integer", "boolean" or "string") and, when they
# apply, nullable (TRUE), categories (a factor's levels, in order), min and max.

SUPPORTED <- paste("double (float), integer, factor or character (string),",
                   "logical (boolean)")

# One input field per column of the sample, in the sample's order.
infer_inputs <- function(sample, model) {
  if (!is.data.frame(sample)) {
    stop("sample must be a data.frame of the model's inputs, got ",
         paste(class(sample), collapse = "/"), call. = FALSE)
  }
  if (nrow(sample) == 0) {
    stop("the sample has no rows: give a few rows of the training data's predictors",
         call. = FALSE)
  }
  columns <- names(sample)
  if (length(columns) == 0) stop("the sample has no columns", call. = FALSE)
  if (any(is.na(columns) | columns == "")) {
    stop("every column of the sample needs a name", call. = FALSE)
  }
  if (anyDuplicated(columns)) {
    stop("the sample repeats column names: ",
         paste(unique(columns[duplicated(columns)]), collapse = ", "), call. = FALSE)
  }
  fields <- lapply(columns, function(name) input_field(name, sample[[name]]))
  check_columns_used(columns, model)
  fields
}

input_field <- function(name, column) {
  field <- list(name = name, type = column_type(name, column))
  if (anyNA(column)) field$nullable <- TRUE
  if (is.factor(column)) field$categories <- levels(column)
  field
}

# The contract type of a column, or a refusal that names the column and its type.
column_type <- function(name, column) {
  kind <- class(column)
  if (is.factor(column) && is.ordered(column)) {
    # The runner builds a plain factor from the categories; a model fitted on an ordered
    # one would then predict differently (or refuse the column).
    stop("column '", name, "' is an ordered factor, which the runner cannot rebuild ",
         "(it builds plain factors): fit and package the model with ",
         "factor(x, ordered = FALSE)", call. = FALSE)
  }
  if (identical(kind, "factor")) {
    if (length(levels(column)) == 0) {
      stop("column '", name, "' is a factor without levels", call. = FALSE)
    }
    return("string")
  }
  if (identical(kind, "numeric") && is.double(column)) {
    if (any(is.infinite(column))) {
      stop("column '", name, "' holds infinite values, which JSON cannot carry",
           call. = FALSE)
    }
    return("float")
  }
  type <- switch(kind[1], integer = "integer", character = "string", logical = "boolean",
                 NULL)
  if (length(kind) != 1 || is.null(type)) {
    what <- if (is.list(column)) "list" else paste(kind, collapse = "/")
    stop("column '", name, "' has unsupported type ", what,
         " (supported: ", SUPPORTED, ")", call. = FALSE)
  }
  type
}

# Columns beyond those the model uses are an error when the model says which it uses (a
# formula's terms: lm, glm, randomForest's formula interface, ...); otherwise they cannot
# be told apart and are kept.
check_columns_used <- function(columns, model) {
  used <- tryCatch(all.vars(delete.response(terms(model))), error = function(e) NULL)
  if (length(used) == 0 || "." %in% used) return(invisible())
  extra <- setdiff(columns, used)
  if (length(extra)) {
    stop("the sample has columns the model does not use: ", paste(extra, collapse = ", "),
         " (the model uses ", paste(used, collapse = ", "), ")", call. = FALSE)
  }
}

# The data.frame the runner builds from records of these fields: a string field with
# categories becomes a factor with exactly those levels, float numeric, integer integer
# (numeric when nullable, as the runner has it), boolean logical, any other string
# character; columns in contract order.
rebuild_frame <- function(sample, fields) {
  columns <- lapply(fields, function(f) {
    x <- sample[[f$name]]
    switch(f$type,
           float = as.numeric(x),
           integer = if (isTRUE(f$nullable)) as.numeric(x) else as.integer(x),
           boolean = as.logical(x),
           string = if (is.null(f$categories)) as.character(x)
                    else factor(as.character(x), levels = f$categories))
  })
  names(columns) <- vapply(fields, `[[`, "", "name")
  data.frame(columns, check.names = FALSE, stringsAsFactors = FALSE)
}

# The method given, or predict_proba when predict(type = "prob") gives a matrix (or a
# numeric data.frame, as caret's) with column names: a classifier's class probabilities;
# else predict.
choose_method <- function(model, frame, method) {
  if (!is.null(method)) {
    if (!is_string(method) || !method %in% c("predict", "predict_proba")) {
      stop("method must be \"predict\" or \"predict_proba\", got ", shown(method),
           call. = FALSE)
    }
    return(method)
  }
  prob <- tryCatch(suppressWarnings(predict(model, newdata = frame, type = "prob")),
                   error = function(e) NULL)
  if (is.data.frame(prob)) prob <- as.matrix(prob)  # caret's answer, taken as the runner does
  if (is.matrix(prob) && !is.null(colnames(prob))) "predict_proba" else "predict"
}

# The model's outputs for the frame, made exactly as the runner makes them:
#   predict_proba: predict(model, newdata, type = "prob"); prediction = the class of the
#     highest probability (the first on a tie), proba_<class> per column, in column order.
#   predict: predict(model, newdata); prediction alone.
# Returns list(fields, values: a data.frame of the outputs, missing: rows with an NA).
predict_outputs <- function(model, frame, method) {
  if (method == "predict_proba") {
    prob <- call_predict(model, frame, "predict(model, newdata, type = \"prob\")",
                         type = "prob")
    if (is.data.frame(prob)) prob <- as.matrix(prob)
    if (!is.matrix(prob) || !is.numeric(prob) || is.null(colnames(prob))) {
      stop("predict(model, newdata, type = \"prob\") must give a numeric matrix with the ",
           "classes as column names for method predict_proba, got ",
           paste(class(prob), collapse = "/"), call. = FALSE)
    }
    classes <- colnames(prob)
    if (anyDuplicated(classes) || any(is.na(classes) | classes == "")) {
      stop("the class probabilities' column names must be distinct, non-empty class ",
           "names, got ", paste(classes, collapse = ", "), call. = FALSE)
    }
    check_rows(prob, frame)
    if (any(prob < 0 | prob > 1, na.rm = TRUE)) {
      stop("predict(model, newdata, type = \"prob\") gave values outside [0, 1]: ",
           "not class probabilities", call. = FALSE)
    }
    best <- max.col(prob, ties.method = "first")  # NA for a row with an NA
    values <- c(list(prediction = classes[best]),
                lapply(seq_along(classes), function(j) as.numeric(prob[, j])))
    names(values) <- c("prediction", paste0("proba_", classes))
    fields <- c(list(list(name = "prediction", type = "string", categories = classes)),
                lapply(classes, function(k) {
                  list(name = paste0("proba_", k), type = "float", min = 0, max = 1)
                }))
  } else {
    pred <- call_predict(model, frame, "predict(model, newdata)")
    if (is.matrix(pred) || is.data.frame(pred)) {
      if (ncol(pred) != 1) {
        stop("predict(model, newdata) gave ", ncol(pred), " columns; method predict ",
             "takes one prediction per record", call. = FALSE)
      }
      pred <- pred[, 1]
    }
    check_rows(pred, frame)
    field <- list(name = "prediction")
    if (is.factor(pred)) {
      field$type <- "string"
      field$categories <- levels(pred)
      pred <- as.character(pred)
    } else if (is.character(pred)) {
      field$type <- "string"
    } else if (is.logical(pred)) {
      field$type <- "boolean"
    } else if (is.numeric(pred)) {
      field$type <- "float"
      pred <- as.numeric(pred)
      if (any(is.infinite(pred))) {
        stop("predict(model, newdata) gave infinite values for the sample, which JSON ",
             "cannot carry", call. = FALSE)
      }
    } else {
      stop("predict(model, newdata) gave ", paste(class(pred), collapse = "/"),
           ": method predict takes a factor, character, logical or numeric prediction",
           call. = FALSE)
    }
    values <- list(prediction = unname(pred))
    fields <- list(field)
  }
  values <- data.frame(values, check.names = FALSE, stringsAsFactors = FALSE)
  # NA inputs may give NA outputs (randomForest does): the outputs must then allow nulls,
  # or the engine would reject the model's own answers.
  missing <- sum(!stats::complete.cases(values))
  if (missing > 0) {
    fields <- lapply(fields, function(f) {
      if (anyNA(values[[f$name]])) f$nullable <- TRUE
      f
    })
  }
  list(fields = fields, values = values, missing = missing)
}

call_predict <- function(model, frame, what, ...) {
  out <- tryCatch(predict(model, newdata = frame, ...), error = function(e) {
    stop(what, " failed on the sample: ", conditionMessage(e), call. = FALSE)
  })
  # ranger answers a list holding $predictions; the runner takes that too.
  if (is.list(out) && !is.data.frame(out) && !is.null(out$predictions)) out$predictions
  else out
}

check_rows <- function(out, frame) {
  got <- NROW(out)
  if (got != nrow(frame)) {
    stop("predict() gave ", got, " rows for the sample's ", nrow(frame), call. = FALSE)
  }
}
